"""Print the pinned requirements of rlyard's core plus the given extras (``sql,reward``), one a
line, for the Dockerfile: it installs them in their own layer before the code is copied, so an
edit of the code does not reinstall the dependencies. Self-references (``rlyard[sql,poi]``) are
expanded. Standard library only: it runs on the bare base image."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Any

_SELF = re.compile(r"^rlyard\[([^\]]*)\]$")


def requirements(pyproject: dict[str, Any], extras: list[str]) -> list[str]:
    """The core dependencies and those of ``extras``, in order, without repeats."""
    project = pyproject["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    seen: set[str] = set()
    todo = [e.strip() for e in extras if e.strip()]
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"unknown extra {extra!r}; pyproject.toml has: {', '.join(sorted(optional))}")
        seen.add(extra)
        for req in optional[extra]:
            nested = _SELF.match(req.replace(" ", ""))
            if nested:
                todo.extend(nested.group(1).split(","))
            else:
                out.append(req)
    return list(dict.fromkeys(out))


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: requirements.py PYPROJECT EXTRAS (comma-separated, may be empty)")
    data = tomllib.loads(Path(argv[0]).read_text())
    print("\n".join(requirements(data, argv[1].split(","))))


if __name__ == "__main__":
    main(sys.argv[1:])
