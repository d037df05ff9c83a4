"""Consistent hashing: keys (tool session ids) to nodes (tool-server replicas).

Each node owns ``vnodes`` points on a 64-bit ring, at the hashes of ``"<node>#<i>"``; a key goes
to the node of the first point at or after the key's hash, wrapping around. Adding a node moves
only the keys that now fall before one of its points (about 1/n of them), removing one moves only
its own keys (to the next points' nodes): every other key stays where it was. The hash is
BLAKE2b, so every process (any Python, any machine) builds the same ring from the same nodes.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Collection, Iterable, Iterator

DEFAULT_VNODES = 160


def ring_hash(text: str) -> int:
    """The 64-bit ring position of ``text`` (stable across processes, unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    """A ring of nodes with ``vnodes`` virtual nodes each (more: a more even spread, a larger ring).

    Raises:
        ValueError: ``vnodes`` < 1, or a node is added twice.
    """

    def __init__(self, nodes: Iterable[str] = (), *, vnodes: int = DEFAULT_VNODES) -> None:
        if vnodes < 1:
            raise ValueError(f"vnodes={vnodes}: must be >= 1")
        self.vnodes = vnodes
        self._points: list[int] = []      # sorted ring positions
        self._owners: list[str] = []      # the node of each position
        self._nodes: set[str] = set()
        for node in nodes:
            self.add(node)

    @property
    def nodes(self) -> frozenset[str]:
        """The nodes on the ring."""
        return frozenset(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node: object) -> bool:
        return node in self._nodes

    def add(self, node: str) -> None:
        """Put ``node``'s virtual nodes on the ring."""
        if node in self._nodes:
            raise ValueError(f"node {node!r} is already on the ring")
        self._nodes.add(node)
        for i in range(self.vnodes):
            point = ring_hash(f"{node}#{i}")
            at = bisect.bisect_left(self._points, point)
            # ties between nodes (2^-64 odds) are broken by name, so the ring is the same in any order
            while at < len(self._points) and self._points[at] == point and self._owners[at] < node:
                at += 1
            self._points.insert(at, point)
            self._owners.insert(at, node)

    def remove(self, node: str) -> None:
        """Take ``node`` off the ring (KeyError if it is not on it)."""
        self._nodes.remove(node)
        kept = [(p, o) for p, o in zip(self._points, self._owners, strict=True) if o != node]
        self._points = [p for p, _ in kept]
        self._owners = [o for _, o in kept]

    def candidates(self, key: str) -> Iterator[str]:
        """Every node once, in the order ``key`` walks the ring: its owner first, then the nodes
        that take it over when the ones before are excluded."""
        if not self._points:
            return
        start = bisect.bisect_left(self._points, ring_hash(key))
        seen: set[str] = set()
        n = len(self._points)
        for i in range(n):
            owner = self._owners[(start + i) % n]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == len(self._nodes):
                    return

    def node_for(self, key: str, exclude: Collection[str] = ()) -> str | None:
        """The node that owns ``key``, skipping the nodes in ``exclude`` (e.g. replicas marked
        down); None when no node is left."""
        for node in self.candidates(key):
            if node not in exclude:
                return node
        return None
