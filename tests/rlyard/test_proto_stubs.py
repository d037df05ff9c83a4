"""The committed protobuf stubs are what ``scripts/gen_proto.py`` makes from proto/."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

STUB_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def stubs(root: Path) -> dict[str, Path]:
    """Stub files under ``root/rlyard/<svc>/v1/`` by their path relative to ``root``."""
    return {
        str(p.relative_to(root)): p
        for p in sorted((root / "rlyard").glob("*/v1/*"))
        if p.name.endswith(STUB_SUFFIXES)
    }


def test_committed_stubs_match_the_protos(repo: Any, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    done = subprocess.run(
        [str(repo.python), str(repo.root / "scripts" / "gen_proto.py"), "--out", str(out)],
        capture_output=True, text=True, timeout=60, cwd=repo.root,
    )
    assert done.returncode == 0, f"gen_proto.py failed:\n{done.stdout}\n{done.stderr}"

    fresh = stubs(out)
    committed = stubs(repo.root)
    protos = sorted((repo.root / "proto" / "rlyard").glob("*/v1/*.proto"))
    assert len(fresh) == 3 * len(protos) > 0, f"expected three stubs per proto, got {sorted(fresh)}"
    missing = sorted(set(fresh) - set(committed))
    orphaned = sorted(set(committed) - set(fresh))
    stale = sorted(rel for rel in set(fresh) & set(committed) if fresh[rel].read_bytes() != committed[rel].read_bytes())
    assert not (missing or orphaned or stale), (
        "the committed protobuf stubs are out of date with proto/: run `make proto` "
        "(python scripts/gen_proto.py) and commit the result.\n"
        f"  missing: {missing}\n  without a proto: {orphaned}\n  differ: {stale}"
    )
