"""Settings of the local-life POI tool family (environment prefix ``RLYARD_TOOLS_POI``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlyard.errors import ConfigError
from rlyard.settings import EnvSettings


@dataclass(frozen=True)
class PoiSettings(EnvSettings):
    """The POI corpus that ``search``, ``retrieve``, ``poi_detail`` and ``nearby`` read (what
    ``python -m envs.local_services.poi_corpus`` writes), where its indexes are cached
    (empty: ``<dir>/index``), and what encodes ``retrieve``'s queries: ``onnx`` (ONNX Runtime, its
    model exported into the index folder on first use) or ``torch`` (PyTorch, the fallback)."""

    ENV_PREFIX = "RLYARD_TOOLS_POI"

    dir: Path = Path("data/generated/poi")
    index_dir: Path | None = None
    max_results: int = 20               # records one search/retrieve/nearby call returns at most
    encoder: str = "onnx"               # "onnx" or "torch" (rlyard.embedding)
    encoder_threads: int = 0            # the ONNX encoder's intra-op threads (0: two, or one on one CPU)

    def __post_init__(self) -> None:
        if self.encoder not in ("onnx", "torch"):
            raise ConfigError(f"{self.ENV_PREFIX}_ENCODER must be 'onnx' or 'torch' (got {self.encoder!r})")
        if self.encoder_threads < 0:
            raise ConfigError(f"{self.ENV_PREFIX}_ENCODER_THREADS must be >= 0 (0: automatic), "
                              f"got {self.encoder_threads}")
        if self.max_results < 1:
            raise ConfigError(f"{self.ENV_PREFIX}_MAX_RESULTS must be >= 1 (got {self.max_results})")

    @property
    def indexes(self) -> Path:
        """Where the BM25 and dense indexes are cached."""
        return self.index_dir if self.index_dir is not None else self.dir / "index"
