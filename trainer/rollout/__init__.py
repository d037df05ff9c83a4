"""Rollouts of tool-using episodes: ``RolloutEngine`` (async), ``EngineThread`` + ``rollout_sync``
for the synchronous trainer."""

from trainer.rollout.engine import RolloutEngine
from trainer.rollout.sync import EngineThread, rollout_sync
from trainer.rollout.template import ToolTurnTemplate

__all__ = ["EngineThread", "RolloutEngine", "ToolTurnTemplate", "rollout_sync"]
