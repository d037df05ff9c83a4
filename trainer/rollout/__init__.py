"""Rollouts of tool-using episodes: ``RolloutEngine`` (async), ``EngineThread`` + ``rollout_sync``
for the synchronous trainer, ``GenerationBatcher`` for batching the policy across trajectories."""

from trainer.rollout.engine import RolloutEngine
from trainer.rollout.generation import GenerationBatcher, batch_seed, derive_seed
from trainer.rollout.sync import EngineThread, rollout_sync
from trainer.rollout.template import ToolTurnTemplate

__all__ = [
    "EngineThread",
    "GenerationBatcher",
    "RolloutEngine",
    "ToolTurnTemplate",
    "batch_seed",
    "derive_seed",
    "rollout_sync",
]
