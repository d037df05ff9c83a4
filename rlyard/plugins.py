"""What the plug-in registries of the tool server and the reward service share:
one class per name, modules imported to register, unknown names refused with the
list of known ones."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from typing import Any

from rlyard.errors import ConfigError


def add_plugin(registry: dict[str, Any], kind: str, cls: Any) -> None:
    """Register ``cls`` under ``cls.name``; a second class with that name is refused."""
    name = cls.name
    if name in registry and registry[name] is not cls:
        raise ConfigError(f"{kind} name {name!r} is registered twice ({registry[name]} and {cls})")
    registry[name] = cls


def import_modules(package_name: str) -> None:
    """Import every module of a package (those starting with ``_`` are helpers)."""
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")


def check_known(registry: dict[str, Any], kind: str, names: Iterable[str]) -> None:
    """A ConfigError naming the unknown names and the available ones."""
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ConfigError(f"unknown {kind}(s) {', '.join(unknown)}; available: {', '.join(sorted(registry))}")
