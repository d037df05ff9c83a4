"""Generate the Python stubs of every proto under proto/ (``make proto``).

Stubs land beside the package path of each proto (``rlyard/<svc>/v1/``), so
generated imports need no rewriting. ``--out DIR`` writes them elsewhere (the
freshness test compares such a copy with the committed stubs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"


def proto_files() -> list[Path]:
    """Every .proto file under proto/, sorted for a stable order."""
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every proto into ``out_dir``; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    written: list[Path] = []
    for rel in files:
        pkg = out_dir / Path(rel).parent
        # every package level needs an __init__.py to import
        level = pkg
        while level != out_dir and level != out_dir / "rlyard":
            init = level / "__init__.py"
            if not init.exists():
                init.write_text("")
            level = level.parent
        stem = Path(rel).stem
        written += [pkg / f"{stem}_pb2.py", pkg / f"{stem}_pb2.pyi", pkg / f"{stem}_pb2_grpc.py"]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repo)")
    ns = parser.parse_args(argv)
    for path in generate(ns.out):
        print(path.relative_to(ns.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
