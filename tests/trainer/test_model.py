"""The tiny policy: tokenizer, chat template, model presets, checkpoint round trip."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from envs.tokenizer_corpus import SQL_TOOLS, build_corpus
from tool_servers.local import tool_schemas
from trainer.model import (
    MARKER_TOKENS,
    SIZE_PRESETS,
    SPECIAL_TOKENS,
    PolicyInfo,
    build_config,
    build_model,
    count_params,
    init_policy,
    marker_ids,
    train_tokenizer,
)
from trainer.model.corpus import DEFAULT_CORPUS_FILE, read_corpus

ROUND_TRIP = [
    "SELECT T1.name ,  count(*) FROM singer AS T1 JOIN concert AS T2 ON T1.id = T2.sid GROUP BY T1.name",
    "select avg(age) from dogs where country  =  'Haiti' or cell  =  '09700166582' ;",
    '{"name": "sql_query", "arguments": {"query": "SELECT \\"a\\" FROM t"}, "n": [1, 2.5e-3, null, true]}',
    "Wilhelm Conrad Röntgen, 北京市, Ελληνικά, emoji 😀🚀, Feb\u00a01,\u00a02018\ttab\r\nCRLF  two  spaces ",
    "<think>plan</think>\n<tool_call>\n{\"name\": \"list_tables\", \"arguments\": {}}\n</tool_call>",
    "",
]


@pytest.fixture(scope="module")
def corpus() -> str:
    return read_corpus()


@pytest.fixture(scope="module")
def tokenizer(corpus: str):  # type: ignore[no-untyped-def]
    return train_tokenizer([corpus])


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("policy") / "qwen2-tiny"
    info = init_policy(out)
    assert info == PolicyInfo(out_dir=out, n_params=info.n_params, vocab_size=2048, arch="qwen2")
    return out


def test_committed_corpus_is_what_the_code_builds(corpus: str) -> None:
    assert DEFAULT_CORPUS_FILE.exists()
    assert corpus == build_corpus()
    assert len(corpus.encode()) < 2_000_000
    assert "<tool_call>\n{\"name\": \"sql_query\"" in corpus and "SQL error" in corpus


def test_tokenizer_is_deterministic_and_depends_on_the_corpus(corpus: str, tokenizer) -> None:  # type: ignore[no-untyped-def]
    again = train_tokenizer([corpus])
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    other = train_tokenizer([corpus[: len(corpus) // 3]])
    assert other.get_vocab() != tokenizer.get_vocab()
    assert len(tokenizer) == 2048


def test_special_tokens_and_markers_are_single_ids(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = marker_ids(tokenizer)
    assert [ids[t] for t in SPECIAL_TOKENS] == [0, 1, 2]
    assert sorted(ids[t] for t in MARKER_TOKENS) == list(range(2040, 2048))
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    # In running text too, whatever sits next to them.
    text = 'x<tool_call>{"a":1}</tool_call>y <think>a</think>\n<answer>1</answer><|im_end|>'
    encoded = tokenizer.encode(text, add_special_tokens=False)
    for token in ("<tool_call>", "</tool_call>", "<think>", "</think>", "<answer>", "</answer>", "<|im_end|>"):
        assert encoded.count(ids[token]) == 1
    # Markers are not special: decoding with skip_special_tokens keeps them for the parser.
    assert tokenizer.decode(encoded, skip_special_tokens=True) == text.removesuffix("<|im_end|>")


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_decode_encode_round_trip(tokenizer, text: str) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert max(ids, default=0) < len(tokenizer)


def test_round_trip_normalises_to_nfc(tokenizer) -> None:  # type: ignore[no-untyped-def]
    decomposed = "Ro\u0308ntgen"
    assert tokenizer.decode(tokenizer.encode(decomposed)) == unicodedata.normalize("NFC", decomposed)


def test_bpe_learned_sql_and_json(tokenizer) -> None:  # type: ignore[no-untyped-def]
    # A tokenizer that failed to train (bytes only) would spend 40+ tokens here.
    text = 'SELECT count(*) FROM singer WHERE country = "France"'
    assert len(tokenizer.encode(text)) <= 14


def test_chat_template_renders_tools_calls_and_responses(tokenizer) -> None:  # type: ignore[no-untyped-def]
    tools = tool_schemas(SQL_TOOLS)
    messages = [
        {"role": "user", "content": "How many singers are there?"},
        {
            "role": "assistant",
            "content": "<think>Count them.</think>",
            "tool_calls": [
                {"type": "function", "function": {"name": "list_tables", "arguments": {}}},
                {
                    "type": "function",
                    "function": {"name": "sql_query", "arguments": '{"query": "SELECT count(*) FROM singer"}'},
                },
            ],
        },
        {"role": "tool", "name": "list_tables", "content": "singer (6 rows): Singer_ID, Name"},
        {"role": "tool", "name": "sql_query", "content": "count(*)\n6"},
        {"role": "assistant", "content": "<answer>6</answer>"},
        {"role": "user", "content": "Thanks."},
    ]
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    head, _, tail = text.rpartition("</tools>")
    assert head.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n")
    assert [json.loads(line) for line in head.split("<tools>\n")[1].strip().splitlines()] == tools
    assert tail == (
        "\n\nFor each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nHow many singers are there?<|im_end|>\n"
        "<|im_start|>assistant\n<think>Count them.</think>\n"
        '<tool_call>\n{"name": "list_tables", "arguments": {}}\n</tool_call>\n'
        '<tool_call>\n{"name": "sql_query", "arguments": {"query": "SELECT count(*) FROM singer"}}\n</tool_call>'
        "<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nsinger (6 rows): Singer_ID, Name\n</tool_response>\n"
        "<tool_response>\ncount(*)\n6\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<answer>6</answer><|im_end|>\n"
        "<|im_start|>user\nThanks.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, return_dict=True)[
        "input_ids"
    ]
    by_id = marker_ids(tokenizer)
    # 2 calls + the example in the system turn (which also has an empty "<tool_call></tool_call>")
    assert ids.count(by_id["<tool_call>"]) == 4 and ids.count(by_id["</tool_call>"]) == 4
    assert ids.count(by_id["<tool_response>"]) == 2 and ids.count(by_id["</tool_response>"]) == 2
    assert ids.count(by_id["<|im_start|>"]) == 7 and ids.count(by_id["<|im_end|>"]) == 6
    assert tokenizer.decode(ids) == text


def test_chat_template_without_tools_uses_the_given_system_turn(tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )


def _expected_params(arch: str, size: str, vocab: int) -> int:
    """Hand count: tied embedding + per layer (q, k, v, o, gate/up/down, 2 norms) + final norm."""
    s = SIZE_PRESETS[size]
    h, kv = s.hidden_size, s.num_key_value_heads * (s.hidden_size // s.num_attention_heads)
    attn = h * h + 2 * h * kv + h * h + ((h + 2 * kv) if arch == "qwen2" else 0)   # Qwen2 has q/k/v biases
    layer = attn + 3 * h * s.intermediate_size + 2 * h
    return vocab * h + s.num_hidden_layers * layer + h


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("size", ["tiny", "small"])
def test_presets_have_1_to_5_million_parameters(arch: str, size: str) -> None:
    model = build_model(build_config(arch, size, 2048, pad_token_id=0, eos_token_id=[2, 0]))
    n = count_params(model)
    assert n == _expected_params(arch, size, 2048)
    assert (1_000_000 <= n < 2_000_000) if size == "tiny" else (4_000_000 <= n <= 5_000_000)
    assert model.config.tie_word_embeddings and model.config.max_position_embeddings >= 2048
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_unknown_arch_or_size_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown arch"):
        build_config("gpt2", "tiny", 2048, pad_token_id=0, eos_token_id=2)
    with pytest.raises(ValueError, match="unknown size"):
        build_config("qwen2", "huge", 2048, pad_token_id=0, eos_token_id=2)


def test_weights_are_seed_deterministic() -> None:
    config = build_config("llama", "tiny", 2048, pad_token_id=0, eos_token_id=2)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = build_model(config, seed=7), build_model(config, seed=7), build_model(config, seed=8)
    assert torch.rand(1) == before   # the caller's RNG stream is untouched
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_checkpoint_loads_with_auto_classes(policy_dir: Path) -> None:
    names = {p.name for p in policy_dir.iterdir()}
    expected = {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"}
    assert expected <= names
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.vocab_size == len(tokenizer) == 2048
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in model.generation_config.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id == 0
    # The loaded tokenizer encodes exactly as tokenizer.json does (no class-specific rewrite).
    raw = Tokenizer.from_file(str(policy_dir / "tokenizer.json"))
    for text in ROUND_TRIP:
        assert tokenizer.encode(text, add_special_tokens=False) == raw.encode(text, add_special_tokens=False).ids
    # Same weights as a fresh build with the same seed.
    fresh = build_model(model.config, seed=0)
    ids = torch.tensor([tokenizer.encode("SELECT name FROM singer")])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, fresh(ids).logits)
    assert json.loads((policy_dir / "rlyard_policy.json").read_text())["n_params"] == count_params(model)


def test_generate_runs_and_stops_at_im_end(policy_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    tools = tool_schemas(SQL_TOOLS)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "How many singers?"}], tools=tools, add_generation_prompt=True,
        return_dict=True, return_tensors="pt",
    )
    n_prompt = prompt["input_ids"].shape[1]
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == n_prompt + 8   # an untrained model rarely hits eos in 8 greedy tokens
    again = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(out, again)
    # Force <|im_end|>: generation stops there through generation_config's eos ids alone.
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    forced = model.generate(**prompt, max_new_tokens=8, do_sample=False, sequence_bias={(im_end,): 100.0})
    assert forced[0, n_prompt:].tolist() == [im_end]


def test_init_policy_from_a_corpus_folder(tmp_path: Path) -> None:
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    (corpus_dir / "a.txt").write_text(read_corpus()[:200_000], encoding="utf-8")
    info = init_policy(tmp_path / "llama", arch="llama", size="tiny", vocab_size=512, seed=3, corpus=corpus_dir)
    assert (info.arch, info.vocab_size) == ("llama", 512)
    assert info.n_params == _expected_params("llama", "tiny", 512)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "llama")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.vocab_size == 512
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "llama")
    assert len(tokenizer.encode("<tool_response>", add_special_tokens=False)) == 1


def test_cli_model_init_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "policy"
    result = subprocess.run([sys.executable, "-m", "rlyard_app.cli.main", "model", "init", "--out", str(out),
                             "--arch", "llama", "--seed", "3"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "llama policy of 1,443,456 parameters" in result.stdout
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == 1_443_456
    assert len(tokenizer) == model.config.vocab_size
