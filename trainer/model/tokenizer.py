"""A byte-level BPE tokenizer for the tiny policy, trained in the repo with ``tokenizers``.

Decisions:

- Qwen2's pipeline exactly: NFC normaliser, its split regex (digits one by one), then
  byte-level. transformers 5 loads a ``qwen2`` checkpoint's tokenizer as ``Qwen2Tokenizer``,
  which imposes that pipeline, so anything else would encode differently after loading.
  Hence ``decode(encode(text)) == text`` holds for NFC text (what a model or a database
  writes almost always is); decomposed accents come back composed.
- ``<|endoftext|>`` (pad), ``<|im_start|>``, ``<|im_end|>`` (eos of a turn) are *special*
  tokens with ids 0, 1, 2.
- The markers ``<tool_call>`` … ``</answer>`` are *added, non-special* tokens at the end of
  the vocabulary, as in Qwen2.5: each is one id, so the rollout loop can stop on
  ``</tool_call>`` and label regions by id, yet ``decode(..., skip_special_tokens=True)``
  keeps them, so a parser of the decoded text still sees the tags.
- Markers and special tokens are cut out of the training text, so no merge learns them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from trainer.model.chat_template import CHAT_TEMPLATE

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)
MARKER_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
)
# Qwen2's split pattern (tokenizer.json of Qwen2.5): contractions, letters, single digits,
# punctuation runs, newlines, spaces.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_CUT = re.compile("|".join(re.escape(t) for t in (*SPECIAL_TOKENS, *MARKER_TOKENS)))


def _training_pieces(texts: Iterable[str]) -> Iterator[str]:
    """The texts with special tokens and markers cut out (they must not be merged)."""
    for text in texts:
        yield from (piece for piece in _CUT.split(text) if piece)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 2048, *, model_max_length: int = 4096
) -> PreTrainedTokenizerFast:
    """Train the BPE on ``texts`` and wrap it with eos/pad and the chat template.

    ``vocab_size`` counts every token, special and markers included; a corpus too small
    to reach it yields fewer. The same texts give the same vocabulary and merges.
    """
    n_reserved = len(SPECIAL_TOKENS) + len(MARKER_TOKENS)
    if vocab_size < 256 + n_reserved:
        raise ValueError(f"vocab_size={vocab_size} is too small: it needs 256 bytes + {n_reserved} reserved tokens")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(MARKER_TOKENS),
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_pieces(texts), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKER_TOKENS])
    return wrap_tokenizer(tok, model_max_length=model_max_length)


def wrap_tokenizer(tok: Tokenizer, *, model_max_length: int = 4096) -> PreTrainedTokenizerFast:
    """A transformers tokenizer over ``tok``: eos ``<|im_end|>``, pad ``<|endoftext|>``, no bos."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )


def marker_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """The id of every special token and marker (each is exactly one token)."""
    ids: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *MARKER_TOKENS):
        encoded = tokenizer.encode(token, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"{token!r} encodes to {len(encoded)} tokens; the tokenizer was not built by rlyard")
        ids[token] = encoded[0]
    return ids
