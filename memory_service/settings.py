"""Settings of the graph memory service (environment prefix ``RLYARD_MEMORY``)."""

from __future__ import annotations

from dataclasses import dataclass

from memory_service.utility import UtilityParams
from rlyard.embedding import ENCODERS
from rlyard.errors import ConfigError
from rlyard.settings import EnvSettings


@dataclass(frozen=True)
class MemorySettings(EnvSettings):
    """Where the memory lives, how utilities learn, what Distill and Retrieve do, and the limits
    of a request.

    ``db_url`` is any SQLAlchemy URL: a SQLite file (the embedded default; WAL mode) or
    ``postgresql+psycopg://user:password@host/db`` (Compose and Kubernetes). The store migrates
    its schema to the newest revision when it opens.
    """

    db_url: str = "sqlite:////tmp/rlyard-memory/memory.db"
    # utility learning (memory_service.utility, docs/memory.md)
    learning_rate: float = 0.5            # η when a request sends 0
    baseline_momentum: float = 0.1        # β of the running mean of ΔR
    min_utility: float = 0.0
    max_utility: float = 1.0
    prior_utility: float = 0.5            # a new meta-cognition's utility, and where unused ones decay to
    decay: float = 0.01                   # λ per update round a meta-cognition is not used
    # distillation (memory_service.distill)
    success_threshold: float = 0.5        # a path with reward >= this succeeded
    min_paths: int = 4                    # paths of a task type before Distill looks at it (request 0)
    min_support: int = 2                  # paths on each side of a comparison a rule needs
    min_gap: float = 0.25                 # success-rate difference a rule needs
    max_new: int = 8                      # meta-cognitions one Distill creates at most (request 0)
    judge_endpoint: str = ""              # OpenAI-compatible API base; "" = rules and templates only
    judge_model: str = ""
    judge_api_key: str = ""
    judge_timeout_s: float = 30.0
    # requests
    max_turns: int = 256                  # turns of one recorded trajectory
    max_trajectory_bytes: int = 4 * 1024 * 1024
    max_top_k: int = 64
    max_task_text_chars: int = 20_000
    max_updates: int = 4096               # utility updates in one request
    worker_threads: int = 4               # store and encoder work runs on these threads
    # the MiniLM runtime of queries and new meta-cognitions (rlyard.embedding): ONNX Runtime, exported
    # from the packaged weights into encoder_dir at the first start, or PyTorch
    encoder: str = "onnx"
    encoder_dir: str = "/tmp/rlyard-encoder"
    encoder_threads: int = 0              # the ONNX encoder's intra-op threads (0: two, or one on one CPU)

    def __post_init__(self) -> None:
        if not self.db_url:
            raise ConfigError("RLYARD_MEMORY_DB_URL must name a database (e.g. sqlite:////tmp/memory.db)")
        self.utility_params()   # refuses bad numbers now, not at the first update
        for name in ("max_turns", "max_trajectory_bytes", "min_paths", "min_support", "max_new", "max_top_k",
                     "max_updates", "worker_threads", "max_task_text_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"RLYARD_MEMORY_{name.upper()} must be >= 1")
        if not 0 <= self.min_gap <= 1:
            raise ConfigError("RLYARD_MEMORY_MIN_GAP must be in [0, 1] (a difference of success rates)")
        if self.encoder not in ENCODERS:
            raise ConfigError(f"RLYARD_MEMORY_ENCODER must be one of {', '.join(ENCODERS)} (got {self.encoder!r})")
        if self.encoder == "onnx" and not self.encoder_dir:
            raise ConfigError("RLYARD_MEMORY_ENCODER_DIR must name a writable folder for the ONNX export "
                              "(or set RLYARD_MEMORY_ENCODER=torch)")
        if self.encoder_threads < 0:
            raise ConfigError(f"RLYARD_MEMORY_ENCODER_THREADS must be >= 0 (0: automatic), got {self.encoder_threads}")
        if self.judge_timeout_s <= 0:
            raise ConfigError("RLYARD_MEMORY_JUDGE_TIMEOUT_S must be > 0 seconds")

    def utility_params(self) -> UtilityParams:
        """The utility update's constants."""
        return UtilityParams(self.learning_rate, self.baseline_momentum, self.min_utility, self.max_utility,
                             self.prior_utility, self.decay)
