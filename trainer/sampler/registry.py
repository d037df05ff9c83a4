"""Sampler backends by name (``model.backend``). A backend that is unknown, whose packages are not
installed here, or that this version does not implement is refused when the config loads, with
what to do about it; it is never replaced by another."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from rlyard.errors import ConfigError


@dataclass(frozen=True)
class SamplerBackend:
    """A backend: the modules it needs, what to install when one is missing, and whether this
    version implements it."""

    name: str
    summary: str
    requires: tuple[str, ...]
    install: str
    implemented: bool = True
    not_implemented_why: str = ""


BACKENDS: dict[str, SamplerBackend] = {
    "hf": SamplerBackend(
        "hf", "transformers in the trainer's process, sampling with the trained module itself",
        ("transformers", "torch"), "pip install 'rlyard[train]'"),
    "remote": SamplerBackend(
        "remote", "the sampler service (`rlyard serve sampler`) over gRPC; weights published to a shared "
        "directory (model.sampler: its address, model.weights_dir: the directory)",
        ("grpc", "safetensors"), "pip install 'rlyard[train]'"),
    "vllm": SamplerBackend(
        "vllm", "vLLM on a CUDA GPU, weights synced from the trainer after each update",
        ("vllm",), "pip install 'rlyard[gpu]' on a machine with a CUDA GPU", implemented=False,
        not_implemented_why="the vLLM sampler comes with the sampler service; use backend hf until then"),
}


def check_backend(name: str) -> SamplerBackend:
    """The backend ``name``, or a ConfigError that says what to install or choose instead."""
    backend = BACKENDS.get(name)
    if backend is None:
        raise ConfigError(f"model.backend {name!r} is not a sampler backend; known: {', '.join(sorted(BACKENDS))}")
    missing = [m for m in backend.requires if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"model.backend {name!r} needs {', '.join(missing)}, which is not installed here: "
                          f"{backend.install}")
    if not backend.implemented:
        raise ConfigError(f"model.backend {name!r} is not available in this version: {backend.not_implemented_why}")
    return backend


def build_sampler(name: str, policy: Any, **options: Any) -> Any:
    """The sampler of backend ``name`` for the trained ``policy`` (an ``HFPolicy``); ``options`` go
    to the backend (``max_batch_size`` for the local one; ``target``, ``weights_root`` and the
    other ``RemoteSampler`` arguments for the remote one)."""
    check_backend(name)
    if name == "hf":
        from trainer.sampler.local import LocalSampler

        return LocalSampler(policy, **options)
    if name == "remote":
        from trainer.sampler.remote import RemoteSampler

        vision = policy if getattr(policy, "supports_images", False) else None
        return RemoteSampler(image_tokenizer=vision, **options)
    raise ConfigError(f"model.backend {name!r} has no builder")  # every implemented backend has one above
