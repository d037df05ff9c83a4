"""Published weight versions: how the trainer hands new weights to sampler services.

A weights root (a directory every sampler can read: a shared volume, an NFS or object-store mount)
holds one folder per version, ``v{version:08d}/`` (``model.safetensors`` by
``safetensors.torch.save_model``, which handles tied weights; ``config.json`` when the model has an
HF config; ``meta.json``), and a ``LATEST`` file naming the current one. ``publish_weights`` writes
a version's folder under a temporary name, renames it into place, then switches ``LATEST`` with
``os.replace``: a reader sees the old version or the whole new one, never a half-written folder.

``LATEST`` is the truth: a resumed run that publishes an earlier step again moves it back. Each
publication carries a fresh ``publication`` id, so that a sampler holding version 5 can tell that
a version 5 published again is other weights.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

LATEST = "LATEST"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"


@dataclass(frozen=True)
class Published:
    """One published version: its number, its folder and its publication id."""

    version: int
    path: Path
    publication: str


def version_dir(root: str | Path, version: int) -> Path:
    """The folder of ``version`` under ``root`` (whether or not it exists)."""
    if version < 0:
        raise ValueError(f"weight version {version}: versions are >= 0")
    return Path(root) / f"v{version:08d}"


def publish_weights(model: torch.nn.Module, root: str | Path, version: int, *, keep: int | None = None) -> Path:
    """Write ``model``'s weights as ``version`` under ``root`` and make it the latest; returns its
    folder. Publishing a version that exists replaces it (a resumed run's step published again).
    ``keep``: then delete all but the ``keep`` highest versions and this one (None: keep all; a
    sampler holds what it loaded in memory, so only a sampler that never loaded a deleted version
    misses it)."""
    if keep is not None and keep < 1:
        raise ValueError(f"keep={keep}: keep at least 1 version, or None for all")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = version_dir(root, version)
    publication = uuid.uuid4().hex
    tmp = root / f".{final.name}.{publication}.tmp"
    tmp.mkdir()
    try:
        save_model(model, str(tmp / WEIGHTS_FILE))
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "to_json_file"):
            config.to_json_file(str(tmp / "config.json"))
        meta = {"version": int(version), "publication": publication, "published_at": time.time()}
        (tmp / META_FILE).write_text(json.dumps(meta))
        if final.exists():
            old = root / f".{final.name}.{publication}.old"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = root / f".{LATEST}.{publication}.tmp"
    pointer.write_text(json.dumps({"version": int(version), "dir": final.name, "publication": publication}))
    os.replace(pointer, root / LATEST)
    if keep is not None:
        _prune(root, keep, final)
    return final


def _prune(root: Path, keep: int, current: Path) -> None:
    """Delete the published folders beyond the ``keep`` highest versions, never ``current``."""
    versions = sorted((p for p in root.glob("v*") if p.is_dir() and p.name[1:].isdigit()),
                      key=lambda p: int(p.name[1:]), reverse=True)
    for path in versions[keep:]:
        if path != current:
            shutil.rmtree(path, ignore_errors=True)


def latest(root: str | Path) -> Published | None:
    """What ``LATEST`` under ``root`` names; None when nothing was published there yet.

    Raises:
        ValueError: ``LATEST`` does not parse or names a folder that is missing.
    """
    pointer = Path(root) / LATEST
    try:
        text = pointer.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        version, name, publication = int(data["version"]), str(data["dir"]), str(data["publication"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{pointer} does not parse ({exc}); publish a version again with publish_weights") from None
    path = Path(root) / name
    if not (path / WEIGHTS_FILE).is_file():
        raise ValueError(f"{pointer} names {name}, which has no {WEIGHTS_FILE}")
    return Published(version, path, publication)


def latest_version(root: str | Path) -> int | None:
    """The version ``LATEST`` under ``root`` names (None: nothing published)."""
    found = latest(root)
    return None if found is None else found.version


def published(root: str | Path, version: int) -> Published | None:
    """``version``'s folder under ``root`` if it was published (None: it was not, or was removed)."""
    path = version_dir(root, version)
    try:
        meta = json.loads((path / META_FILE).read_text())
    except FileNotFoundError:
        return None
    if not (path / WEIGHTS_FILE).is_file():
        return None
    return Published(int(meta["version"]), path, str(meta["publication"]))


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load the weights of a published folder into ``model`` (of the same architecture).

    Raises:
        ValueError: the tensors do not match ``model`` (another architecture or size).
    """
    try:
        load_model(model, str(Path(path) / WEIGHTS_FILE), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"the weights in {path} do not fit this model: {str(exc)[:500]}") from None
