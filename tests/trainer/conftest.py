"""Fixtures for the trainer tests: a tiny random Qwen2 with a byte-level BPE tokenizer trained
here, saved with ``save_pretrained`` so that it loads like any checkpoint.

Built once per session (about a second); independent of ``trainer/model/`` on purpose.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

# Single-token markers. The chat markers and the pad are special (as in Qwen2.5); the tool and
# reasoning markers are ordinary added tokens, so ``decode`` keeps them by default.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MARKER_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
                 "<think>", "</think>", "<answer>", "</answer>"]

_WORDS = ["select", "name", "from", "singer", "where", "age", "count", "the", "of", "answer",
          "query", "table", "concert", "stadium", "how", "many", "are", "there", "think", "tool"]


def _corpus() -> list[str]:
    """A few hundred strings in the shape of agent turns (text, JSON tool calls, SQL)."""
    lines: list[str] = []
    for i in range(300):
        a, b, c = _WORDS[i % 20], _WORDS[(i * 7) % 20], _WORDS[(i * 13) % 20]
        lines.append(f"{a} {b} {c} {i}")
        lines.append(f'{{"name": "sql_query", "arguments": {{"query": "SELECT {a} FROM {b} LIMIT {i}"}}}}')
        lines.append(f"Let me {a} the {b}: {c}s are {i % 17}. Ünïcödé ✓ {i}")
    return lines


def build_tiny_checkpoint(directory: Path) -> Path:
    """Train the tokenizer, build a ~0.7M-parameter random Qwen2 and save both in ``directory``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_tokens([AddedToken(m, special=False, normalized=False) for m in MARKER_TOKENS])
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", clean_up_tokenization_spaces=False
    )
    hf_tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    config = Qwen2Config(
        vocab_size=len(hf_tok), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, initializer_range=0.2,
        eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(directory)
    hf_tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the tiny random Qwen2 checkpoint (model + tokenizer)."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerFast:
    """The tiny checkpoint's tokenizer, loaded back with ``AutoTokenizer``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    return tokenizer
