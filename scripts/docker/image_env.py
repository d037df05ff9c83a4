"""A service image's Python packages without docker: a folder of links to the installed
distributions that an entry of the table's ``images:`` installs (its extras' requirements and
theirs, read from this environment's metadata), so that ``python -S`` with
``PYTHONPATH=<folder>:<repo>`` can import those and nothing else, as in the image.

    python scripts/docker/image_env.py image /tmp/rlyard-image-env
    PYTHONPATH=/tmp/rlyard-image-env:$PWD RLYARD_TOOLS_TOOLS=crop python -S -m rlyard_app.cli.main serve tools

Only what this environment has installed can be linked: a requirement missing here is left out
(and so missing in the folder too). Not the image itself: the base's system libraries are this
machine's.
"""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution, requires
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from requirements import requirements  # noqa: E402  (the Dockerfile's own list, next to this file)

sys.path.pop(0)


def image_distributions(extras: list[str], pyproject: Path = ROOT / "pyproject.toml") -> set[str]:
    """The normalised names of the distributions an image with ``extras`` installs, dependencies
    included (markers judged for this interpreter and the requiring extras); not rlyard itself."""
    todo = [(Requirement(r), frozenset[str]()) for r in requirements(tomllib.loads(pyproject.read_text()), extras)]
    seen: set[str] = set()
    while todo:
        req, extras_of_parent = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in ("", *extras_of_parent)):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            deps = requires(req.name) or []
        except PackageNotFoundError:
            continue
        todo.extend((Requirement(d), frozenset(req.extras)) for d in deps)
    return seen


def write_env(names: set[str], dest: Path) -> Path:
    """Links in ``dest`` to every top-level file and folder (packages, modules, ``.libs``,
    ``.dist-info``) of the installed distributions ``names``; ``.pth`` hooks left out."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in sorted(names):
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        base = Path(str(dist.locate_file("")))
        for top in sorted({f.parts[0] for f in dist.files or () if f.parts[0] not in ("..", "__pycache__")
                           and not f.name.endswith(".pth")}):
            link = dest / top
            if (base / top).exists() and not link.exists():
                link.symlink_to(base / top)
    return dest


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: image_env.py IMAGE DEST  (IMAGE: an entry of the table's images:)")
    sys.path.insert(0, str(ROOT))
    from rlyard_app.services import load_table

    images = load_table().images
    if argv[0] not in images:
        raise SystemExit(f"no image {argv[0]!r} in the table; it has: {', '.join(sorted(images))}")
    print(write_env(image_distributions(list(images[argv[0]])), Path(argv[1])))


if __name__ == "__main__":
    main(sys.argv[1:])
