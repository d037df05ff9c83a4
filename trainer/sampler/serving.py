"""What the sampler service runs: a policy's weight versions, each behind a ``LocalSampler``.

``SamplerHost`` starts from a base checkpoint (version 0, or what ``LATEST`` under the weights
root names) and loads each newly published version (``trainer.sampler.weights``) between requests:
a watcher reads ``LATEST`` every ``poll_s`` (and a request for a version not held, or ``info``,
looks at once); the new weights load on a worker thread while requests go on with the current
ones, then new requests get them. The last ``keep_versions`` versions stay loaded, so that a
trajectory that began on the previous version finishes on it (its requests name it); a request
for an older one raises ``WeightVersionUnavailable`` (FAILED_PRECONDITION), for one never
published ``NotFound``. A version that drops out of the window is freed once its requests finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rlyard.errors import InvalidArgument, NotFound, Unavailable
from trainer.policy.base import Generation
from trainer.policy.hf import HFPolicy
from trainer.policy.prefix_cache import DEFAULT_MAX_TOKENS
from trainer.sampler.base import SampleRequest, SamplerInfo, WeightVersionUnavailable
from trainer.sampler.local import LocalSampler
from trainer.sampler.weights import Published, latest, load_weights, published

logger = logging.getLogger(__name__)


@dataclass
class _Held:
    """One loaded version: its sampler, its publication id, the requests it is serving."""

    version: int
    publication: str
    sampler: LocalSampler
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def enter(self) -> None:
        self.inflight += 1
        self.idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if not self.inflight:
            self.idle.set()


@dataclass
class HostStats:
    """Counts since start: requests served, tokens generated, versions loaded, pinned requests refused."""

    requests: int = 0
    generated_tokens: int = 0
    loads: int = 0
    refused_versions: int = 0
    by_version: dict[int, int] = field(default_factory=dict)


class SamplerHost:
    """Weight versions of one policy, served by ``LocalSampler``s (see the module docstring).

    ``base``: the policy of the base checkpoint (its module is copied for each loaded version);
    ``weights_root``: where the trainer publishes (None: the base weights only, version 0);
    ``max_model_len``: prompt + ``max_new_tokens`` limit (0: the model's
    ``max_position_embeddings``).
    """

    def __init__(self, base: HFPolicy, *, model_name: str = "", weights_root: Path | None = None,
                 keep_versions: int = 2, poll_s: float = 0.2, max_batch_size: int | None = None,
                 cache_max_tokens: int = DEFAULT_MAX_TOKENS, max_model_len: int = 0) -> None:
        if keep_versions < 1:
            raise ValueError(f"keep_versions={keep_versions}: keep at least the current version")
        if poll_s <= 0:
            raise ValueError(f"poll_s={poll_s}: must be > 0 seconds")
        self.base = base
        self.model_name = model_name
        self.weights_root = weights_root
        self.keep_versions = keep_versions
        self.poll_s = poll_s
        self.max_batch_size = max_batch_size
        self.cache_max_tokens = cache_max_tokens
        config = getattr(base.model, "config", None)
        text_config = getattr(config, "text_config", None) or config
        model_len = int(getattr(text_config, "max_position_embeddings", 0) or 0)
        self.max_model_len = max_model_len or model_len
        self.vocab_size = base.vocab_size
        self.stats = HostStats()
        self._held: OrderedDict[int, _Held] = OrderedDict()   # oldest first; the last is current
        self._current: _Held | None = None
        self._load_lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._retired: set[int] = set()   # versions served once and freed since
        self._freeing: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Serve the latest published version (or the base weights as version 0), and watch for new ones."""
        if self.weights_root is not None:
            await self.refresh()
        if self._current is None:
            self._add(0, "base", self._sampler(self.base))
        if self.weights_root is not None and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="sampler-weights-watcher")

    async def aclose(self) -> None:
        """Stop watching and free every version."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        for held in list(self._held.values()):
            await held.sampler.aclose()
        for task in list(self._freeing):
            await task
        self._held.clear()
        self._current = None

    @property
    def weight_version(self) -> int:
        """The version an unpinned request gets now."""
        if self._current is None:
            raise RuntimeError("SamplerHost.start() was not awaited")
        return self._current.version

    @property
    def loaded_versions(self) -> tuple[int, ...]:
        """The versions held, oldest first."""
        return tuple(self._held)

    # ------------------------------------------------------------------ requests
    def check(self, request: SampleRequest) -> None:
        """``InvalidArgument`` for a request this model cannot take: no prompt, too long, ids
        outside the vocabulary, images on a text model."""
        n = len(request.prompt_ids)
        if n == 0:
            raise InvalidArgument("prompt_ids is empty: send at least one token (start it with the chat template)")
        if self.max_model_len and n + request.params.max_new_tokens > self.max_model_len:
            raise InvalidArgument(f"prompt of {n} tokens + max_new_tokens {request.params.max_new_tokens} exceeds "
                                  f"the model's {self.max_model_len} positions: shorten the context or ask for "
                                  "fewer tokens")
        low, high = min(request.prompt_ids), max(request.prompt_ids)
        if low < 0 or high >= self.vocab_size:
            raise InvalidArgument(f"prompt_ids holds {low if low < 0 else high}, outside the vocabulary "
                                  f"[0, {self.vocab_size})")
        if request.images and not self.supports_images:
            raise InvalidArgument(f"this model ({self.model_name or type(self.base).__name__}) takes no images; the "
                                  f"request carries {len(request.images)}")

    @property
    def supports_images(self) -> bool:
        """Whether the policy takes images."""
        return bool(getattr(self.base, "supports_images", False))

    async def sample(self, request: SampleRequest) -> Generation:
        """One continuation, by the version the request names (None: the current one).

        Raises:
            InvalidArgument: see ``check``.
            WeightVersionUnavailable: the named version was published but is no longer held.
            NotFound: the named version was never published.
        """
        if self._current is None:
            raise Unavailable("the sampler has not started (SamplerHost.start)")
        self.check(request)
        held = self._current if request.weight_version is None else self._held.get(request.weight_version)
        if held is None:
            held = await self._pinned(int(request.weight_version or 0))
        assert held is not None
        held.enter()
        try:
            # the held sampler checks the pin against its own version: unpin the request for it
            gen = await held.sampler.sample(SampleRequest(request.prompt_ids, request.params, request.images,
                                                          request.cache_key))
        finally:
            held.leave()
            self._evict()
        gen.weight_version = held.version
        self.stats.requests += 1
        self.stats.generated_tokens += len(gen.token_ids)
        self.stats.by_version[held.version] = self.stats.by_version.get(held.version, 0) + 1
        return gen

    async def _pinned(self, version: int) -> _Held:
        """The held version ``version`` after a look at ``LATEST``, or why there is none."""
        await self.refresh()
        held = self._held.get(version)
        if held is not None:
            return held
        self.stats.refused_versions += 1
        loaded = ", ".join(str(v) for v in self._held) or "none"
        if version in self._retired or (self.weights_root is not None
                                        and published(self.weights_root, version) is not None):
            raise WeightVersionUnavailable(f"weight version {version} is no longer loaded (this sampler keeps the "
                                           f"last {self.keep_versions}: {loaded}); redo the trajectory")
        raise NotFound(f"weight version {version} was never published under {self.weights_root or '(no weights root)'}"
                       f"; loaded: {loaded}")

    def release(self, cache_keys: Sequence[str]) -> int:
        """Free what every held version keeps for ``cache_keys``; how many keys held something."""
        freed = 0
        for key in cache_keys:
            held_any = False
            for held in self._held.values():
                cache = held.sampler.cache
                if cache is not None and key in cache:
                    held_any = True
                held.sampler.release(key)
            freed += held_any
        return freed

    # ------------------------------------------------------------------ versions
    async def info(self) -> SamplerInfo:
        """What is served now (after a look at ``LATEST``)."""
        found = await self.refresh() if self.weights_root is not None else None
        return SamplerInfo(
            model=self.model_name, backend="hf", weight_version=self.weight_version,
            weight_publication=self._current.publication if self._current is not None else "",
            loaded_versions=self.loaded_versions, latest_published=None if found is None else found.version,
            weights_root=str(self.weights_root or ""), max_model_len=self.max_model_len, vocab_size=self.vocab_size,
            supports_images=self.supports_images, max_batch_size=self.max_batch_size or 0,
        )

    async def refresh(self) -> Published | None:
        """Load the version ``LATEST`` names if it is not the current one; returns what it names."""
        if self.weights_root is None:
            return None
        async with self._load_lock:
            try:
                found = latest(self.weights_root)
            except ValueError:
                logger.exception("cannot read the published weights under %s; serving what is loaded",
                                 self.weights_root)
                return None
            current = self._current
            if found is None or (current is not None and (current.version, current.publication)
                                 == (found.version, found.publication)):
                return found
            held = self._held.get(found.version)
            if held is not None and held.publication == found.publication:
                self._held.move_to_end(found.version)     # LATEST moved back to a version still held
                self._current = held
                return found
            policy = await asyncio.to_thread(self._load, found)
            self._add(found.version, found.publication, self._sampler(policy))
            self.stats.loads += 1
            logger.info("sampler: serving weight version %d (%s); loaded %s", found.version, found.path,
                        list(self._held))
            return found

    def _load(self, found: Published) -> HFPolicy:
        model = copy.deepcopy(self.base.model)
        load_weights(model, found.path)
        return self.base.with_model(model)

    def _sampler(self, policy: HFPolicy) -> LocalSampler:
        return LocalSampler(policy, max_batch_size=self.max_batch_size, cache_max_tokens=self.cache_max_tokens)

    def _add(self, version: int, publication: str, sampler: LocalSampler) -> None:
        old = self._held.pop(version, None)
        held = _Held(version, publication, sampler)
        self._held[version] = held
        self._current = held
        if old is not None:   # the same version published again: the old weights go once idle
            self._retire(old)
        self._evict()

    def _evict(self) -> None:
        """Drop the oldest versions beyond ``keep_versions`` that serve no request now."""
        while len(self._held) > self.keep_versions:
            oldest = next(iter(self._held.values()))
            if oldest.inflight or oldest is self._current:
                return
            del self._held[oldest.version]
            self._retire(oldest)

    def _retire(self, held: _Held) -> None:
        self._retired.add(held.version)

        async def close() -> None:
            if held.inflight:
                await held.idle.wait()
            await held.sampler.aclose()
            logger.info("sampler: freed weight version %d", held.version)

        task = asyncio.get_running_loop().create_task(close(), name=f"sampler-free-v{held.version}")
        self._freeing.add(task)
        task.add_done_callback(self._freeing.discard)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:   # a bad checkpoint must not stop the service: it keeps serving what it has
                logger.exception("sampler: loading the published weights failed; serving version %s",
                                 self.weight_version)
                await asyncio.sleep(max(self.poll_s, 5.0))
