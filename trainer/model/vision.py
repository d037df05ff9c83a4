"""The tiny vision-language policy: a Qwen2-VL of a few million parameters built from a config.

The text side is a size preset of ``build.py`` (a Qwen2 decoder with multimodal rotary positions,
``mrope_section`` splitting each head's rotary frequencies between time, height and width); the
vision side is a 2-layer ViT with Qwen2-VL's patching (14-pixel patches, 2 frames, 2×2 patches
merged into one token). The repo's BPE tokenizer gains Qwen2-VL's vision tokens as special tokens
at the end of its vocabulary, and its chat template renders an image content part as
``<|vision_start|><|image_pad|><|vision_end|>``. The image processor resizes an image to between
``MIN_PIXELS`` and ``MAX_PIXELS`` pixels (multiples of 28 on each side), so an image becomes
4 to 16 tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from tokenizers import AddedToken
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast, Qwen2VLConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from trainer.model.chat_template import chat_template

VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
VISION_TOKENS = (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)
IMAGE_PLACEHOLDER = VISION_START + IMAGE_PAD + VISION_END

PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
_TOKEN_SIDE = PATCH_SIZE * MERGE_SIZE          # one image token covers 28 × 28 pixels
MIN_PIXELS = 4 * _TOKEN_SIDE * _TOKEN_SIDE     # at least 4 tokens (2 × 2)
MAX_PIXELS = 16 * _TOKEN_SIDE * _TOKEN_SIDE    # at most 16 tokens (e.g. 4 × 4)


@dataclass(frozen=True)
class VisionSize:
    """The vision tower: ``depth`` blocks of width ``embed_dim``, merged into the text width."""

    depth: int = 2
    embed_dim: int = 64
    num_heads: int = 2
    mlp_ratio: int = 2


def add_vision_tokens(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """The tokenizer with Qwen2-VL's vision tokens as special tokens (one id each, at the end of the
    vocabulary) and the chat template that renders an image part as the placeholder. In place."""
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in VISION_TOKENS],
                         special_tokens=True)
    tokenizer.chat_template = chat_template(IMAGE_PLACEHOLDER)
    for token in VISION_TOKENS:
        if len(tokenizer.encode(token, add_special_tokens=False)) != 1:
            raise ValueError(f"{token!r} does not encode to one token")
    return tokenizer


def build_vision_config(text: PretrainedConfig, tokenizer: PreTrainedTokenizerFast,
                        vision: VisionSize = VisionSize()) -> Qwen2VLConfig:
    """A Qwen2-VL config whose decoder has the shape of the Qwen2 ``text`` config."""
    head_dim = text.hidden_size // text.num_attention_heads
    half = head_dim // 2                         # rotary frequencies per head, split t / h / w
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]   # Qwen2-VL: [16, 24, 24] of 64
    rope = {**text.rope_parameters, "mrope_section": section}
    text_fields = {k: getattr(text, k) for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "initializer_range",
        "pad_token_id", "eos_token_id")}
    ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in VISION_TOKENS}  # type: ignore[arg-type]
    return Qwen2VLConfig(
        text_config={**text_fields, "rope_parameters": rope, "use_sliding_window": False, "bos_token_id": None,
                     "tie_word_embeddings": True},
        vision_config={**asdict(vision), "hidden_size": text.hidden_size, "patch_size": PATCH_SIZE,
                       "spatial_merge_size": MERGE_SIZE, "temporal_patch_size": TEMPORAL_PATCH_SIZE,
                       "in_channels": 3},
        image_token_id=ids[IMAGE_PAD], video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START], vision_end_token_id=ids[VISION_END],
        tie_word_embeddings=True,
    )


def build_vision_model(config: Qwen2VLConfig, seed: int = 0) -> PreTrainedModel:
    """A freshly initialised Qwen2-VL; the same config and seed give the same weights."""
    from transformers import Qwen2VLForConditionalGeneration

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config)
    return model.float().eval()


def build_image_processor() -> Qwen2VLImageProcessorPil:
    """Qwen2-VL's image processor (the PIL backend: no torchvision needed) with the tiny policy's
    pixel bounds, so an image becomes 4 to 16 tokens."""
    return Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=PATCH_SIZE,
                                    merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE)
