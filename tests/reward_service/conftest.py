"""Fixtures of the reward-service tests: a tiny judge model built here, never downloaded.

``tiny_judge_dir`` is a random Qwen2 causal LM (~0.4M parameters) with a byte-level BPE
tokenizer trained on a few hundred strings and a ChatML chat template, written with
``save_pretrained`` so that ``AutoModelForCausalLM``/``AutoTokenizer`` load it like any
checkpoint. ``overfit_judge`` teaches such a model one reply to one chat in a few seconds.
(``chat_server``, the scripted OpenAI-compatible endpoint, lives in ``tests/conftest.py``.)
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from reward_service.rewards.judge import DEFAULT_RUBRIC, DEFAULT_SYSTEM_PROMPT, DEFAULT_TEMPLATE

if TYPE_CHECKING:  # torch and transformers load only for the tests that build a model
    from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Judge-like text: the default prompt pieces, questions, answers and verdicts."""
    rng = random.Random(seed)
    cities = ["Paris", "Rome", "Berlin", "Madrid", "Lisbon", "Vienna", "Oslo", "Tokyo"]
    countries = ["France", "Italy", "Germany", "Spain", "Portugal", "Austria", "Norway", "Japan"]
    reasons = ["fine", "the answer matches the reference", "wrong city", "no answer given", "partly correct"]
    texts = [DEFAULT_RUBRIC, DEFAULT_TEMPLATE, DEFAULT_SYSTEM_PROMPT]
    for _ in range(n):
        i = rng.randrange(len(cities))
        texts.append(f"Question:\nWhat is the capital of {countries[i]}?\n\nReference answer:\n{cities[i]}")
        texts.append(f"Response to grade:\nThe capital is {rng.choice(cities)}.")
        texts.append(f"Score: {rng.randint(0, 10)}\nReason: {rng.choice(reasons)}")
    return texts


def build_tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``_corpus`` with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )


def build_tiny_qwen2(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Qwen2ForCausalLM:
    """A random Qwen2 causal LM sized for the CPU (2 layers, hidden 128). The output
    embedding is untied: tied, a random model only repeats its last input token."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


@pytest.fixture(scope="session")
def tiny_judge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint directory with a random tiny Qwen2 and its tokenizer (chat template included)."""
    out = tmp_path_factory.mktemp("tiny_judge")
    tokenizer = build_tiny_tokenizer()
    tokenizer.save_pretrained(out)
    build_tiny_qwen2(tokenizer).save_pretrained(out)
    return out


Messages = Sequence[Mapping[str, str]]


def _overfit(base_dir: Path, messages: Messages, target: str, out_dir: Path, max_steps: int = 150) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    prompt = tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = torch.tensor([prompt_ids + target_ids])
    labels = torch.tensor([[-100] * len(prompt_ids) + target_ids])  # loss on the reply only
    wanted = torch.tensor(target_ids)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(max_steps):
        out = model(input_ids=input_ids, labels=labels)
        # Greedy decoding reproduces the reply once every reply token is the argmax after its
        # prefix; the loss bound leaves a margin so that generate's cached forward agrees.
        greedy = out.logits[0, len(prompt_ids) - 1 : -1].argmax(-1)
        if bool((greedy == wanted).all()) and out.loss.item() < 0.15:
            break
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    else:
        raise AssertionError(f"the tiny judge did not learn its reply in {max_steps} steps (loss {out.loss:.3f})")
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def overfit_judge() -> Callable[[Path, Messages, str, Path], Path]:
    """Factory: ``overfit_judge(base_dir, messages, target, out_dir)`` trains the model in
    ``base_dir`` to answer ``messages`` with ``target`` (then EOS) and saves it to ``out_dir``."""
    return _overfit


@pytest.fixture
def refused_endpoint() -> Iterator[str]:
    """An endpoint whose port is bound but not listening: connecting is refused, and no
    other process can take the port while the test runs."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    sock.close()
