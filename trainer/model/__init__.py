"""The tiny policy: a byte-level BPE tokenizer trained in the repo, a Qwen2-style chat
template with Hermes tool calls, and a 1–5M-parameter Qwen2/Llama built from a config."""

from trainer.model.build import SIZE_PRESETS, PolicyInfo, build_config, build_model, count_params, init_policy
from trainer.model.chat_template import CHAT_TEMPLATE
from trainer.model.tokenizer import MARKER_TOKENS, SPECIAL_TOKENS, marker_ids, train_tokenizer

__all__ = [
    "CHAT_TEMPLATE",
    "MARKER_TOKENS",
    "SIZE_PRESETS",
    "SPECIAL_TOKENS",
    "PolicyInfo",
    "build_config",
    "build_model",
    "count_params",
    "init_policy",
    "marker_ids",
    "train_tokenizer",
]
