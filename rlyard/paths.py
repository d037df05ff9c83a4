"""Where the repository's data lives: defaults of paths resolve against the checkout (the image's
working directory is a copy of it)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
