"""What the plug-in registries of the tool server and the reward service share: one class per
name, each imported from its module only when it is served, unknown names refused with the list
of known ones, and a missing optional dependency named with the extra that brings it."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from rlyard.errors import ConfigError


def add_plugin(registry: dict[str, Any], kind: str, cls: Any) -> None:
    """Register ``cls`` under ``cls.name``; a second class with that name is refused."""
    name = cls.name
    if name in registry and registry[name] is not cls:
        raise ConfigError(f"{kind} name {name!r} is registered twice ({registry[name]} and {cls})")
    registry[name] = cls


def load_plugin(registry: dict[str, Any], kind: str, name: str, modules: Mapping[str, str],
                extras: Mapping[str, str]) -> Any:
    """The class registered as ``name``: already in ``registry`` (e.g. registered by a test), else
    imported from ``modules[name]``, whose import registers it.

    Raises:
        ConfigError: an unknown name, or a module whose optional dependencies are not installed
            (``extras`` maps a module, else its package, to the pip extra that brings them).
    """
    if name in registry:
        return registry[name]
    module = modules.get(name)
    if module is None:
        known = sorted(set(modules) | set(registry))
        raise ConfigError(f"unknown {kind} {name!r}; available: {', '.join(known)}")
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        package = module.rsplit(".", 1)[0]
        extra = extras.get(module, extras.get(package, "all"))
        raise ConfigError(f"{kind} {name!r} needs the {extra!r} extra (missing module {exc.name!r}): "
                          f"pip install 'rlyard[{extra}]'") from None
    if name not in registry:
        raise ConfigError(f"module {module} did not register a {kind} named {name!r}")
    return registry[name]
