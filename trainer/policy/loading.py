"""The policy class a checkpoint needs: ``VLMPolicy`` for a vision-language model, else ``HFPolicy``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from trainer.policy.hf import HFPolicy


def is_vision_checkpoint(model_dir: str | Path) -> bool:
    """Whether the checkpoint's ``config.json`` has a ``vision_config`` (Qwen2-VL, Qwen2.5-VL, ...)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return False
    return json.loads(path.read_text(encoding="utf-8")).get("vision_config") is not None


def load_policy(model_dir: str | Path, *, dtype: torch.dtype | None = None,
                device: str | torch.device = "cpu") -> HFPolicy:
    """The checkpoint as a trainable policy: ``VLMPolicy`` when it has a vision tower, else ``HFPolicy``."""
    if is_vision_checkpoint(model_dir):
        from trainer.policy.vlm import VLMPolicy

        return VLMPolicy(model_dir, dtype=dtype, device=device)
    return HFPolicy(model_dir, dtype=dtype, device=device)
