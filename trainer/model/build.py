"""Build the tiny policy from a config: a Qwen2 or Llama causal LM of 1–5M parameters.

``init_policy`` writes a checkpoint folder that ``AutoModelForCausalLM`` /
``AutoTokenizer.from_pretrained`` (and vLLM) load like any other: safetensors weights,
``config.json``, ``generation_config.json`` (eos = ``<|im_end|>`` and ``<|endoftext|>``),
the tokenizer files with the chat template, and ``rlyard_policy.json`` (how it was made).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from trainer.model.tokenizer import IM_END, PAD_TOKEN, train_tokenizer

ARCHS = ("qwen2", "llama")
MAX_POSITION_EMBEDDINGS = 4096


@dataclass(frozen=True)
class ModelSize:
    """The shape of a preset. Heads are 32 (tiny) or 64 (small) wide, as vLLM kernels take."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int


# Exact counts with the 2048-token vocabulary and tied embeddings (see tests/trainer/test_model.py):
# tiny  qwen2 1,444,992 / llama 1,443,456;  small qwen2 4,659,456 / llama 4,656,384.
SIZE_PRESETS: dict[str, ModelSize] = {
    "tiny": ModelSize(hidden_size=128, intermediate_size=384, num_hidden_layers=6,
                      num_attention_heads=4, num_key_value_heads=2),
    "small": ModelSize(hidden_size=256, intermediate_size=640, num_hidden_layers=6,
                       num_attention_heads=4, num_key_value_heads=2),
}


@dataclass(frozen=True)
class PolicyInfo:
    """What ``init_policy`` wrote."""

    out_dir: Path
    n_params: int
    vocab_size: int
    arch: str


def build_config(
    arch: str, size: str, vocab_size: int, *, pad_token_id: int, eos_token_id: int | list[int]
) -> PretrainedConfig:
    """A Qwen2 or Llama config of a size preset (tied embeddings, 4096 positions, float32)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if size not in SIZE_PRESETS:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZE_PRESETS)}")
    shape = asdict(SIZE_PRESETS[size])
    common = dict(
        vocab_size=vocab_size,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        tie_word_embeddings=True,     # as small Qwen2.5s do; untied, lm_head adds vocab x hidden more
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-6,
        initializer_range=0.02,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        eos_token_id=eos_token_id,
        dtype="float32",
        **shape,
    )
    if arch == "qwen2":
        return Qwen2Config(use_sliding_window=False, **common)  # type: ignore[arg-type]
    return LlamaConfig(attention_bias=False, mlp_bias=False, **common)  # type: ignore[arg-type]


def build_model(config: PretrainedConfig, seed: int = 0) -> PreTrainedModel:
    """A freshly initialised model; the same config and seed give the same weights."""
    with torch.random.fork_rng(devices=[]):   # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        if isinstance(config, Qwen2Config):
            model: PreTrainedModel = Qwen2ForCausalLM(config)
        elif isinstance(config, LlamaConfig):
            model = LlamaForCausalLM(config)
        else:
            raise TypeError(f"expected a Qwen2Config or LlamaConfig, got {type(config).__name__}")
    return model.float().eval()


def count_params(model: torch.nn.Module) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


def generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """Stop on ``<|im_end|>`` (end of turn) or ``<|endoftext|>``; pad with ``<|endoftext|>``."""
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    pad = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    return GenerationConfig(eos_token_id=[im_end, pad], pad_token_id=pad, bos_token_id=None)


def _portable_tokenizer_class(out_dir: Path) -> None:
    """Name the tokenizer class that transformers 4.x (vLLM) and 5.x both know.

    transformers 5 writes ``TokenizersBackend``, which 4.x cannot resolve; ``PreTrainedTokenizerFast``
    loads ``tokenizer.json`` as is in both.
    """
    path = out_dir / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def init_policy(
    out_dir: Path,
    *,
    arch: str = "qwen2",
    size: str = "tiny",
    vocab_size: int = 2048,
    seed: int = 0,
    corpus: Path | None = None,
    vision: bool = False,
) -> PolicyInfo:
    """Train the tokenizer on the corpus, build the model and save both to ``out_dir``.

    Args:
        out_dir: the checkpoint folder (created; existing files are overwritten).
        arch: ``qwen2`` or ``llama``.
        size: a key of ``SIZE_PRESETS`` (``tiny`` ≈ 1.44M, ``small`` ≈ 4.66M parameters).
        vocab_size: tokens in the tokenizer, special tokens and markers included.
        seed: seeds the weight init (the tokenizer depends on the corpus only).
        corpus: a text file or a folder of ``*.txt``; default ``data/corpus/corpus.txt``.
        vision: a Qwen2-VL instead (``trainer.model.vision``: the ``size`` preset's decoder, a
            2-layer vision tower, the vision tokens added after ``vocab_size``, the image processor's
            ``preprocessor_config.json``); ``arch`` must be ``qwen2``.
    """
    from trainer.model.corpus import read_corpus

    if vision and arch != "qwen2":
        raise ValueError(f"a vision policy is a Qwen2-VL: use arch qwen2, not {arch!r}")
    text = read_corpus(corpus)
    tokenizer = train_tokenizer([text], vocab_size=vocab_size, model_max_length=MAX_POSITION_EMBEDDINGS)
    gen = generation_config(tokenizer)
    if vision:
        from trainer.model.vision import (
            add_vision_tokens,
            build_image_processor,
            build_vision_config,
            build_vision_model,
        )

        add_vision_tokens(tokenizer)
    config = build_config(arch, size, len(tokenizer), pad_token_id=gen.pad_token_id, eos_token_id=gen.eos_token_id)
    if vision:
        model = build_vision_model(build_vision_config(config, tokenizer), seed)
    else:
        model = build_model(config, seed)
    model.generation_config = gen
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _portable_tokenizer_class(out_dir)
    if vision:
        build_image_processor().save_pretrained(out_dir)
    info = PolicyInfo(out_dir=out_dir, n_params=count_params(model), vocab_size=len(tokenizer),
                      arch="qwen2_vl" if vision else arch)
    provenance = {
        "arch": info.arch,
        "size": size,
        "seed": seed,
        "n_params": info.n_params,
        "vocab_size": info.vocab_size,
        "corpus": str(corpus) if corpus is not None else "data/corpus/corpus.txt",
        "corpus_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }
    (out_dir / "rlyard_policy.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    return info
