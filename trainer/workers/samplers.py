"""Sampler kinds a group job can name (``GroupJob.sampler = {"kind": ..., options}``).

- ``remote``: the sampler service at ``target`` (``RemoteSampler``, dialled with the worker's
  ``RLYARD_CLIENT_*``: TLS and the target's token), with the tokenizer of the checkpoint at
  ``tokenizer``. The service loads the versions the trainer publishes; every generation says
  which one sampled it. Text policies only, for now.
- ``local``: the HF checkpoint at ``path`` sampled in the worker's own process (``LocalSampler``),
  its samples recorded as weight version ``version`` (the trainer exported that version there).
- More kinds are plug-ins: ``register_sampler(kind, factory)`` in a module the worker imports
  (``rlyard worker --include module``); the bench registers its forced-tool sampler this way.

A factory is a coroutine run on the worker's event loop, given the job's spec, the worker's
settings and its client settings (TLS and tokens); it returns the sampler with the tokenizer its token
ids belong to (the rollout engine renders prompts and observations with it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from rlyard.tls import ClientSettings
from trainer.sampler import LocalSampler, Sampler
from trainer.workers.settings import WorkerSettings


@dataclass
class BuiltSampler:
    """A sampler and the tokenizer of its token ids."""

    sampler: Sampler
    tokenizer: Any


SamplerFactory = Callable[[dict[str, Any], WorkerSettings, ClientSettings], Awaitable[BuiltSampler]]
SAMPLER_KINDS: dict[str, SamplerFactory] = {}


def register_sampler(kind: str, factory: SamplerFactory) -> None:
    """Make ``kind`` a sampler kind of group jobs; a kind is registered once."""
    if kind in SAMPLER_KINDS and SAMPLER_KINDS[kind] is not factory:
        raise ValueError(f"sampler kind {kind!r} is already registered")
    SAMPLER_KINDS[kind] = factory


async def build(spec: dict[str, Any], settings: WorkerSettings, client: ClientSettings) -> BuiltSampler:
    """The sampler that ``spec`` names; ValueError for an unknown kind or bad options."""
    kind = str(spec.get("kind", ""))
    factory = SAMPLER_KINDS.get(kind)
    if factory is None:
        raise ValueError(f"unknown sampler kind {kind!r} in a group job; this worker knows "
                         f"{', '.join(sorted(SAMPLER_KINDS))} (plug-ins: rlyard worker --include MODULE)")
    return await factory(spec, settings, client)


async def _local(spec: dict[str, Any], settings: WorkerSettings, client: ClientSettings) -> BuiltSampler:
    from trainer.policy.loading import load_policy

    if "path" not in spec:
        raise ValueError(f"sampler kind 'local' needs a 'path' (an HF checkpoint directory); got {spec!r}")
    policy = await asyncio.to_thread(load_policy, str(spec["path"]))
    policy.model.eval()
    sampler = LocalSampler(policy, max_batch_size=spec.get("max_batch_size"))
    # the sampler's own module: the sync only records the version the trainer exported to ``path``
    await sampler.sync_weights(policy.model, int(spec.get("version", 0)))
    return BuiltSampler(sampler, policy.tokenizer)


async def _remote(spec: dict[str, Any], settings: WorkerSettings, client: ClientSettings) -> BuiltSampler:
    from transformers import AutoTokenizer

    from trainer.sampler.remote import RemoteSampler

    missing = [k for k in ("target", "tokenizer") if k not in spec]
    if missing:
        raise ValueError(f"sampler kind 'remote' needs {' and '.join(missing)} (the service's address and a "
                         f"checkpoint directory with its tokenizer); got {spec!r}")
    tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, str(spec["tokenizer"]))
    target = str(spec["target"])
    sampler = RemoteSampler(target, auth_token=client.token_for(target), tls=client.channel_tls(),
                            timeout_s=float(spec.get("timeout_s", 300.0)))
    return BuiltSampler(sampler, tokenizer)


register_sampler("local", _local)
register_sampler("remote", _remote)
