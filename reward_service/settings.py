"""Settings of the reward service (environment prefix ``RLYARD_REWARD``)."""

from __future__ import annotations

from dataclasses import dataclass

from rlyard.errors import ConfigError
from rlyard.settings import EnvSettings


@dataclass(frozen=True)
class RewardSettings(EnvSettings):
    """Which rewards to serve, where the reward service finds its dependencies, and its limits.

    ``RLYARD_REWARD_REWARDS=qa_em,sql_execution`` picks rewards by name (empty: every reward);
    the service imports only those.
    """

    rewards: tuple[str, ...] = ()
    sql_tools_target: str = "127.0.0.1:50051"   # the SQL tool server that sql_execution uses
    sql_tools_auth_token: str | None = None      # bearer token, when that server has RLYARD_AUTH_TOKEN set
    poi_tools_target: str = "127.0.0.1:50055"    # the POI tool server (poi_detail) the local-life metrics read
    tool_timeout_s: float = 30.0                 # deadline of one tool call
    batch_concurrency: int = 32                  # items of a batch scored at once
    worker_threads: int = 4                      # threads for rewards' CPU work (sqlparse, row comparison)
    gold_cache_size: int = 4096                  # cached gold-query results (sql_execution)
    judge_backend: str = "openai"                # "openai" (HTTP endpoint) or "hf" (local model)
    judge_endpoint: str = "http://127.0.0.1:8000/v1"
    judge_model: str = ""                        # model name (openai) or checkpoint dir (hf)
    judge_api_key: str = ""
    judge_timeout_s: float = 60.0
    judge_max_new_tokens: int = 128

    def __post_init__(self) -> None:
        if self.batch_concurrency < 1:
            raise ConfigError("RLYARD_REWARD_BATCH_CONCURRENCY must be >= 1")
        if self.worker_threads < 1:
            raise ConfigError("RLYARD_REWARD_WORKER_THREADS must be >= 1")
        if self.judge_backend not in ("openai", "hf"):
            raise ConfigError("RLYARD_REWARD_JUDGE_BACKEND must be 'openai' or 'hf'")
        if self.tool_timeout_s <= 0:
            raise ConfigError("RLYARD_REWARD_TOOL_TIMEOUT_S must be > 0 seconds")
