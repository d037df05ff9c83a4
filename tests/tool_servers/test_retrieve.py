"""The ``retrieve`` tool and its dense index: real all-MiniLM-L6-v2 embeddings of a generated 2,000-POI
corpus in a real FAISS index, served by a real tool server on 127.0.0.1:0. The corpus is embedded once
per module (the slow part, ~40 s on 2 cores); every later load comes from the on-disk cache."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from envs.local_services.poi_corpus import build_corpus
from rlyard.client import NO_RETRY, ToolClient
from rlyard.embedding import DIMENSION, EncoderError, OnnxEncoder, onnx_file, shared_encoder, shared_torch_encoder
from rlyard.server import WarmUpError
from tool_servers.poi import dense
from tool_servers.poi.retrieve import DenseState
from tool_servers.poi.store import PoiFilter, PoiStore

N = 2_000
ROOT = Path(__file__).resolve().parents[2]
TOOL_SERVICE = "rlyard.tools.v1.ToolService"


@dataclass
class Corpus:
    poi_dir: Path
    index_dir: Path
    store: PoiStore
    index: dense.DenseIndex
    progress: list[tuple[int, int]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The 2,000-POI corpus and its dense index, built (embedded) once and cached under ``index_dir``."""
    root = tmp_path_factory.mktemp("retrieve")
    build_corpus(root / "poi", seed=0, merchants=N)
    store = PoiStore(root / "poi" / "poi.sqlite")
    progress: list[tuple[int, int]] = []
    index = dense.load_or_build(store, root / "index", shared_torch_encoder(),
                                on_progress=lambda done, total: progress.append((done, total)))
    return Corpus(root / "poi", root / "index", store, index, progress)


@pytest.fixture(scope="module")
def other_corpus(tmp_path_factory: pytest.TempPathFactory) -> PoiStore:
    """A small corpus of another seed: another version."""
    folder = tmp_path_factory.mktemp("other") / "poi"
    build_corpus(folder, seed=1, merchants=40)
    return PoiStore(folder / "poi.sqlite")


@pytest.fixture
def retrieve_settings(corpus: Corpus) -> dict[str, Any]:
    return {"tools": ("retrieve",), "poi": {"dir": corpus.poi_dir, "index_dir": corpus.index_dir}}


@pytest.fixture
async def retrieve_client(start_tools: Any, make_client: Any, retrieve_settings: dict[str, Any]) -> ToolClient:
    running = await start_tools(**retrieve_settings)
    await running.wait_ready(timeout=60)
    return make_client(running)


def results(result: Any) -> list[dict[str, Any]]:
    assert not result.is_error, result.content[0].text
    return result.structured["results"]


def spa_record(store: PoiStore) -> dict[str, Any]:
    """The first spa in corpus order that offers a one-hour foot massage and aromatherapy."""
    ids = [str(p) for p in store.columns().poi_ids]
    for record in store.get(ids):
        if {"Foot Massage (60 min)", "Aromatherapy"} <= set(record["specialties"]):
            return record
    raise AssertionError("the corpus has no spa with a foot massage and aromatherapy; pick another record")


# ---------------------------------------------------------------- the index and its cache


def test_build_embeds_every_poi_with_progress_and_caches_a_manifest(corpus: Corpus) -> None:
    assert corpus.progress[-1] == (N, N)
    assert [d for d, _ in corpus.progress] == sorted({d for d, _ in corpus.progress})
    assert len(corpus.progress) == -(-N // dense.EMBED_CHUNK)
    folder = dense.index_folder(corpus.index_dir, corpus.store.version)
    assert folder.name == f"dense-{corpus.store.version[:16]}"
    assert {p.name for p in folder.iterdir()} == {"index.faiss", "manifest.json"}
    assert not list(corpus.index_dir.glob(".dense-*"))                 # no temporary folder left
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["corpus_version"] == corpus.store.version
    assert (manifest["model"], manifest["dimension"], manifest["count"]) == (dense.MODEL_NAME, 384, N)
    assert manifest["build_seconds"] >= manifest["embed_seconds"] > 0
    norms = np.linalg.norm(corpus.index.vectors, axis=1)
    assert corpus.index.vectors.shape == (N, 384) and np.allclose(norms, 1.0, atol=1e-4)


def test_second_load_reuses_the_cache_without_embedding(corpus: Corpus) -> None:
    encoder = corpus.index.encoder
    before = encoder.encoded
    calls: list[tuple[int, int]] = []
    again = dense.load_or_build(corpus.store, corpus.index_dir, encoder, on_progress=lambda d, t: calls.append((d, t)))
    assert calls == [] and encoder.encoded == before                    # no POI embedded again
    assert again.manifest == corpus.index.manifest
    assert np.array_equal(again.vectors, corpus.index.vectors)
    q = corpus.index.vectors[7]
    assert again.search_vector(q, 10) == corpus.index.search_vector(q, 10)


@pytest.fixture(scope="module")
def queries(corpus: Corpus) -> np.ndarray:
    """Embeddings of 40 short requests written from random records ('hotpot in Xuhui, Shanghai')."""
    ids = [str(p) for p in corpus.store.columns().poi_ids]
    rng = np.random.default_rng(1)
    records = corpus.store.get([ids[i] for i in rng.choice(N, 40, replace=False)])
    texts = [f"{r['subcategory'].lower()} in {r['district']}, {r['city']}" for r in records[:20]]
    texts += [f"somewhere for {r['specialties'][0].lower()}" for r in records[20:]]
    return corpus.index.encoder.encode(texts)


def overlap(a: dense.Hits, b: dense.Hits) -> float:
    return len({r for r, _ in a} & {r for r, _ in b}) / max(1, len(b))


def test_graph_search_agrees_with_exact_search(corpus: Corpus, queries: np.ndarray) -> None:
    recall = []
    for q in queries:
        approx = corpus.index.search_vector(q, 10)
        exact = corpus.index.search_vector(q, 10, exact=True)
        assert [s for _, s in exact] == sorted((s for _, s in exact), reverse=True)
        assert np.allclose([s for _, s in exact], corpus.index.vectors[[r for r, _ in exact]] @ q, atol=1e-5)
        recall.append(overlap(approx, exact))
    assert np.mean(recall) >= 0.95


def test_filtered_search_keeps_only_passing_rows(corpus: Corpus, queries: np.ndarray) -> None:
    # exact_below=0: every filter goes through the graph with over-fetching (and its exact fallback).
    over = dense.DenseIndex(corpus.index.index, corpus.index.manifest, corpus.index.encoder, exact_below=0)
    columns = corpus.store.columns()
    recall = []
    for mask in (columns.mask(PoiFilter(city="Shanghai")), columns.mask(PoiFilter(category="Food & Drink"))):
        for q in queries[::4]:
            got = over.search_vector(q, 10, mask)
            assert len(got) == 10 and all(mask[r] for r, _ in got)
            assert np.allclose([s for _, s in got], corpus.index.cosines(q, np.array([r for r, _ in got])), atol=1e-5)
            recall.append(overlap(got, corpus.index.search_vector(q, 10, mask, exact=True)))
    assert np.mean(recall) >= 0.9
    tiny = np.zeros(N, dtype=bool)
    tiny[[5, 900, 1999]] = True          # too few for over-fetching: the exact scan of the 3 rows
    got = over.search_vector(queries[0], 10, tiny)
    assert got == corpus.index.search_vector(queries[0], 10, tiny, exact=True)
    assert sorted(r for r, _ in got) == [5, 900, 1999]
    assert over.search_vector(queries[0], 10, np.zeros(N, dtype=bool)) == []


def test_the_query_fast_path_gives_the_same_vector_as_encode() -> None:
    encoder = shared_torch_encoder()
    for text in ("a quiet café with wifi open before 8", "Sichuan hotpot in Jing'an, rated 4.5+", "x"):
        one, batch = encoder.encode_one(text), encoder.encode([text])[0]
        assert one.dtype == np.float32 and one.shape == (DIMENSION,)
        assert float(one @ batch) > 0.99999 and abs(float(np.linalg.norm(one)) - 1.0) < 1e-5


ENCODER_TEXTS = [
    "x", " ", "?", "a", "spa",                                            # empty-ish and one token
    "quiet cafe to work with wifi", "Kids Playground Birthday Party Package Qiaokou",
    "北京烤鸭 王府井 人均 200 元以内", "Café Crème — brunch & crêpes 🥞 près de Jing'an",    # unicode, emoji
    "spicy hotpot for a group of friends " * 60,                          # past the 256-token cut
    "SELECT * FROM poi; <script>alert(1)</script> \n\t \u0000",           # noise a model may send
]


@pytest.fixture(scope="module")
def onnx_encoder(corpus: Corpus) -> OnnxEncoder:
    """The ONNX encoder, its model exported into the test corpus's index folder."""
    encoder = shared_encoder("onnx", corpus.index_dir)
    assert isinstance(encoder, OnnxEncoder)
    return encoder


def test_the_onnx_export_gives_the_vectors_of_pytorch(onnx_encoder: OnnxEncoder, corpus: Corpus) -> None:
    torch_encoder = shared_torch_encoder()
    assert onnx_file(corpus.index_dir).is_file()
    for text in ENCODER_TEXTS:
        mine, reference = onnx_encoder.encode_one(text), torch_encoder.encode_one(text)
        assert mine.dtype == np.float32 and mine.shape == (DIMENSION,)
        assert 1.0 - float(mine @ reference) < 1e-5, text[:40]
    # a padded batch: each row as the same text alone
    batch, reference_batch = onnx_encoder.encode(ENCODER_TEXTS, batch_size=4), torch_encoder.encode(ENCODER_TEXTS)
    assert batch.shape == (len(ENCODER_TEXTS), DIMENSION)
    assert np.all(1.0 - np.einsum("ij,ij->i", batch, reference_batch) < 1e-5)
    assert shared_encoder("onnx", corpus.index_dir) is onnx_encoder     # one per process and folder


def test_the_onnx_encoder_gives_the_same_vectors_on_one_thread_or_two(onnx_encoder: OnnxEncoder,
                                                                     corpus: Corpus) -> None:
    """Threads split the forward's work, not the model: one thread and two give the same vectors; 0 picks
    two where the process may use two CPUs; a negative count is refused."""
    one = shared_encoder("onnx", corpus.index_dir, threads=1)
    two = shared_encoder("onnx", corpus.index_dir, threads=2)
    assert isinstance(one, OnnxEncoder) and isinstance(two, OnnxEncoder)
    assert (one.threads, two.threads) == (1, 2) and one is not two
    assert onnx_encoder.threads == min(2, len(os.sched_getaffinity(0)))
    for text in ENCODER_TEXTS:
        assert 1.0 - float(one.encode_one(text) @ two.encode_one(text)) < 1e-6, text[:40]
    with pytest.raises(EncoderError, match="encoder threads must be >= 0"):
        shared_encoder("onnx", corpus.index_dir, threads=-1)


def test_with_the_onnx_model_and_the_index_cached_no_torch_is_loaded(onnx_encoder: OnnxEncoder, corpus: Corpus) -> None:
    """The ONNX path's point beside speed: a server whose index and ONNX model are cached loads neither
    torch nor sentence-transformers (a fresh interpreter, the warm-up's calls)."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from tool_servers.poi import dense\n"
        "from rlyard.embedding import shared_encoder, shared_torch_encoder\n"
        "from tool_servers.poi.store import PoiStore\n"
        f"index_dir = Path({str(corpus.index_dir)!r})\n"
        f"store = PoiStore(Path({str(corpus.poi_dir / 'poi.sqlite')!r}))\n"
        "index = dense.load_or_build(store, index_dir, shared_encoder('onnx', index_dir),"
        " build_with=shared_torch_encoder)\n"
        "assert len(index.search('quiet cafe with wifi', 5)) == 5\n"
        "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


async def test_the_retrieve_service_answers_alike_with_either_encoder(
    onnx_encoder: OnnxEncoder, start_tools: Any, make_client: Any, retrieve_settings: dict[str, Any]
) -> None:
    """RLYARD_TOOLS_POI_ENCODER picks the query encoder; the two find the same merchants in the same order."""
    found: dict[str, list[list[str]]] = {}
    for encoder in ("onnx", "torch"):
        running = await start_tools(**{**retrieve_settings, "poi": {**retrieve_settings["poi"], "encoder": encoder}})
        await running.wait_ready(timeout=60)
        client = make_client(running)
        found[encoder] = [[r["poi_id"] for r in results(await client.call_tool("retrieve", {"query": query}))]
                          for query in ("quiet cafe to work with wifi", "spicy hotpot for friends", "北京烤鸭")]
    assert found["onnx"] == found["torch"] and all(len(ids) == 10 for ids in found["onnx"])


def test_rerank_adds_a_small_query_word_coverage_term() -> None:
    hits = [(1, 0.50), (2, 0.49), (3, 0.30)]
    texts = ["A cosy tea house", "Spicy hotpot, beef tripe and more", "Hotpot only"]
    # stems of the query: beef, tripe, hotpot -> coverage 0, 1, 1/3
    got = dense.rerank("the beef tripe hotpot", hits, texts)
    assert [r for r, _ in got] == [2, 1, 3]
    assert np.allclose([s for _, s in got], [0.49 + 0.1, 0.50, 0.30 + 0.1 / 3])
    assert dense.rerank("the and of", hits, texts) == hits                       # no query words: unchanged


def test_hybrid_fusion_is_a_weighted_sum_of_min_max_scores() -> None:
    fused = dense.fuse(np.array([0.9, 0.5, 0.8]), np.array([2.0, 0.0, 4.0]))
    # dense -> [1, 0, 0.75], bm25 -> [0.5, 0, 1]; halves of each
    assert np.allclose(fused, [0.75, 0.0, 0.875])
    assert np.allclose(dense.fuse(np.array([0.9, 0.5]), np.zeros(2)), [0.5, 0.0])  # no word matched


def test_an_index_of_another_corpus_version_is_refused(
    corpus: Corpus, other_corpus: PoiStore, tmp_path: Path, tool_settings: Any
) -> None:
    folder = dense.index_folder(corpus.index_dir, corpus.store.version)
    with pytest.raises(dense.DenseIndexError, match=rf"built from corpus {corpus.store.version[:16]}, not from "
                                                    rf"this corpus \({other_corpus.version[:16]}\)"):
        dense.load(folder, other_corpus.version, corpus.index.encoder)
    # Under the other corpus's name (a copied cache): the server refuses to start.
    shutil.copytree(folder, dense.index_folder(tmp_path / "index", other_corpus.version))
    setup = tool_settings(tools=("retrieve",),
                          poi={"dir": other_corpus.db_path.parent, "index_dir": tmp_path / "index"})
    with pytest.raises(dense.DenseIndexError, match="delete the folder to rebuild"):
        setup.service()


def test_a_damaged_or_missing_index_file_is_refused(corpus: Corpus, tmp_path: Path) -> None:
    folder = shutil.copytree(dense.index_folder(corpus.index_dir, corpus.store.version), tmp_path / "copy")
    data = (folder / "index.faiss").read_bytes()
    (folder / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(dense.DenseIndexError, match="does not match its manifest"):
        dense.load(folder, corpus.store.version, corpus.index.encoder)
    (folder / "index.faiss").write_bytes(data[:-8] + bytes(8))                  # same size, other bytes
    with pytest.raises(dense.DenseIndexError, match="does not match its manifest"):
        dense.load(folder, corpus.store.version, corpus.index.encoder)
    (folder / "index.faiss").unlink()
    with pytest.raises(dense.DenseIndexError, match="is missing"):
        dense.load(folder, corpus.store.version, corpus.index.encoder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(dense.DenseIndexError, match="no usable dense index manifest"):
        dense.load(folder, corpus.store.version, corpus.index.encoder)


def test_a_cancelled_build_leaves_nothing_that_loads(corpus: Corpus, other_corpus: PoiStore, tmp_path: Path) -> None:
    folder = dense.index_folder(tmp_path, other_corpus.version)
    stale = folder.with_name(f".{folder.name}.tmp-999999999")                  # a killed build's leftovers
    stale.mkdir()
    (stale / "index.faiss").write_bytes(b"half")
    cancel = threading.Event()
    with pytest.raises(dense.BuildCancelled):      # set after the first chunk, as a stopping server does
        dense.load_or_build(other_corpus, tmp_path, corpus.index.encoder,
                            on_progress=lambda done, total: cancel.set(), cancel=cancel)
    assert list(tmp_path.iterdir()) == []                                      # no index, no temporary folder


# ---------------------------------------------------------------- the tool through a real server


async def test_a_paraphrased_record_is_found_in_the_top_three(retrieve_client: ToolClient, corpus: Corpus) -> None:
    spa = spa_record(corpus.store)
    query = (f"hour long foot rub and essential oil treatment near {spa['district']} in {spa['city']}, "
             "just drop in")
    for mode in ("dense", "hybrid"):
        result = await retrieve_client.call_tool("retrieve", {"query": query, "top_k": 5, "mode": mode})
        got = results(result)
        assert spa["poi_id"] in [r["poi_id"] for r in got[:3]], (mode, got)
        lines = result.content[0].text.splitlines()
        assert [line.split("]")[0] for line in lines] == [f"[{r['poi_id']}" for r in got]
        assert [r["score"] for r in got] == sorted((r["score"] for r in got), reverse=True)


async def test_filters_are_respected(retrieve_client: ToolClient, corpus: Corpus) -> None:
    args = {"query": "spicy hotpot for a group of friends", "city": "Chengdu", "max_price": 150,
            "min_rating": 4.0, "open_at": "21:00", "weekday": "Friday", "top_k": 8}
    got = results(await retrieve_client.call_tool("retrieve", args))
    conn = sqlite3.connect(corpus.poi_dir / "poi.sqlite")
    try:
        allowed = {row[0] for row in conn.execute(
            "SELECT poi_id FROM poi WHERE city = 'Chengdu' AND avg_price <= 150 AND rating >= 4.0 AND "
            "open_time <= '21:00' AND close_time > '21:00' AND (closed_weekday IS NULL OR closed_weekday != 4)")}
    finally:
        conn.close()
    assert len(got) == min(8, len(allowed)) and {r["poi_id"] for r in got} <= allowed
    assert got[0]["subcategory"] == "Hotpot"
    only_hotpot = results(await retrieve_client.call_tool("retrieve", {**args, "category": "Hotpot"}))
    assert only_hotpot and {r["subcategory"] for r in only_hotpot} == {"Hotpot"}
    none = await retrieve_client.call_tool("retrieve", {"query": "tea", "city": "Chengdu", "min_price": 1e6})
    assert not none.is_error and results(none) == []
    assert "no merchant matches" in none.content[0].text


async def test_top_k_is_capped_by_the_server_like_search(retrieve_client: ToolClient) -> None:
    got = results(await retrieve_client.call_tool("retrieve", {"query": "tea", "top_k": 50}))
    assert len(got) == 20


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"query": "tea", "city": "Atlantis"}, "unknown city 'Atlantis'; known: "),
        ({"query": "tea", "category": "Spaceships"}, "unknown category 'Spaceships'; known: "),
        ({"query": "tea", "open_at": "25:00"}, "is not HH:MM"),
        ({"query": "tea", "weekday": "Funday"}, "field 'weekday'"),
        ({"query": ""}, "field 'query'"),
        ({"query": "   "}, "the query is empty"),
        ({"city": "Shanghai"}, "field 'query': Field required"),
        ({"query": "tea", "top_k": 101}, "field 'top_k'"),
        ({"query": "tea", "top_k": 0}, "field 'top_k'"),
        ({"query": "tea", "min_price": 200, "max_price": 50}, "min_price (200) is above max_price (50)"),
        ({"query": "tea", "mode": "sparse"}, "field 'mode'"),
        ({"query": "tea", "radius_m": 500}, "field 'radius_m': Extra inputs are not permitted"),
    ],
)
async def test_model_mistakes_are_error_results(
    retrieve_client: ToolClient, args: dict[str, Any], message: str
) -> None:
    result = await retrieve_client.call_tool("retrieve", args)
    assert result.is_error and message in result.content[0].text, result.content[0].text


# ---------------------------------------------------------------- readiness


async def test_not_serving_until_the_index_is_loaded(
    start_tools: Any, make_client: Any, tool_settings: Any, retrieve_settings: dict[str, Any]
) -> None:
    definition = tool_settings(**retrieve_settings).service()
    gate = asyncio.Event()
    definition.warm_up.insert(0, gate.wait)          # holds the index load back until the test opens it
    running = await start_tools(definition=definition)
    client: ToolClient = make_client(running, retry=NO_RETRY)
    assert await client.health() == "NOT_SERVING"
    assert await client.health(TOOL_SERVICE) == "NOT_SERVING"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.call_tool("retrieve", {"query": "tea house"})
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "the retrieve index is still loading" in (info.value.details() or "")
    assert not running.ready
    gate.set()
    await running.wait_ready(timeout=60)
    assert await client.health() == "SERVING" and await client.health(TOOL_SERVICE) == "SERVING"
    assert results(await client.call_tool("retrieve", {"query": "tea house", "top_k": 3}))


async def test_a_damaged_index_keeps_the_server_not_serving(
    start_tools: Any, make_client: Any, corpus: Corpus, tmp_path: Path
) -> None:
    folder = shutil.copytree(dense.index_folder(corpus.index_dir, corpus.store.version),
                             dense.index_folder(tmp_path / "index", corpus.store.version))
    (folder / "index.faiss").write_bytes(b"not an index")
    running = await start_tools(tools=("retrieve",), poi={"dir": corpus.poi_dir, "index_dir": tmp_path / "index"})
    with pytest.raises(WarmUpError, match="does not match its manifest"):
        await running.wait_ready(timeout=60)
    client: ToolClient = make_client(running, retry=NO_RETRY)
    assert await client.health() == "NOT_SERVING"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.call_tool("retrieve", {"query": "tea house"})
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "the retrieve index failed to load" in (info.value.details() or "")


def test_an_early_call_during_a_build_says_how_far_it_got() -> None:
    state = DenseState()
    state.on_progress(512, 150_000)
    assert str(state.not_ready()) == "the retrieve index is being built (512 of 150000 POIs embedded); retry later"
    state.dispose()
    assert state.cancel.is_set()
