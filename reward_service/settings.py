"""Settings of the reward service (environment prefix ``RLYARD_REWARD``)."""

from __future__ import annotations

from dataclasses import dataclass

from rlyard.errors import ConfigError
from rlyard.routing import parse_routed_target
from rlyard.settings import EnvSettings


@dataclass(frozen=True)
class RewardSettings(EnvSettings):
    """Which rewards to serve, where the reward service finds its dependencies, and its limits.

    ``RLYARD_REWARD_REWARDS=qa_em,sql_execution`` picks rewards by name (empty: every reward);
    the service imports only those. A spec may name another tool server or judge only from the
    configured and allowed ones: the service never dials an address a caller chose.
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
    # What a request may make the service do (docs/rewards.md, "Limits"):
    max_text_chars: int = 1_000_000              # the longest model output any reward reads
    text_limits: tuple[str, ...] = ()            # per reward, "name=chars" (e.g. sql_execution=100000)
    item_timeout_s: float = 150.0                # one item's scoring budget, past it SYSTEM_ERROR
    allowed_tool_targets: tuple[str, ...] = ()   # tool servers a spec's tool_server may name, besides the two above
    allowed_judge_endpoints: tuple[str, ...] = ()   # judge endpoints a spec may name, besides judge_endpoint
    allowed_judge_checkpoints: tuple[str, ...] = ()  # hf judge dirs a spec may name, besides judge_model

    def __post_init__(self) -> None:
        if self.batch_concurrency < 1:
            raise ConfigError("RLYARD_REWARD_BATCH_CONCURRENCY must be >= 1")
        if self.worker_threads < 1:
            raise ConfigError("RLYARD_REWARD_WORKER_THREADS must be >= 1")
        if self.judge_backend not in ("openai", "hf"):
            raise ConfigError("RLYARD_REWARD_JUDGE_BACKEND must be 'openai' or 'hf'")
        if self.tool_timeout_s <= 0:
            raise ConfigError("RLYARD_REWARD_TOOL_TIMEOUT_S must be > 0 seconds")
        if self.max_text_chars < 1:
            raise ConfigError("RLYARD_REWARD_MAX_TEXT_CHARS must be >= 1 (characters)")
        if not self.item_timeout_s > 0:
            raise ConfigError("RLYARD_REWARD_ITEM_TIMEOUT_S must be > 0 seconds")
        self.text_limit_overrides()  # refuses a malformed entry now, not at the first request
        for key, target in (("SQL_TOOLS_TARGET", self.sql_tools_target), ("POI_TOOLS_TARGET", self.poi_tools_target)):
            try:   # a list of replicas or routed:///name:port is routed by session (rlyard.routing)
                parse_routed_target(target)
            except ValueError as exc:
                raise ConfigError(f"RLYARD_REWARD_{key}: {exc}") from None

    def text_limit_overrides(self) -> dict[str, int]:
        """``text_limits`` as {reward name: characters}."""
        out: dict[str, int] = {}
        for entry in self.text_limits:
            name, sep, value = entry.partition("=")
            if not sep or not name.strip() or not value.strip().isdigit() or int(value) < 1:
                raise ConfigError(f"RLYARD_REWARD_TEXT_LIMITS: {entry!r} is not name=chars (e.g. "
                                  "sql_execution=100000, chars >= 1)")
            out[name.strip()] = int(value)
        return out

    @property
    def tool_targets(self) -> frozenset[str]:
        """The tool servers a spec's ``tool_server`` may name: the configured ones and the allowed."""
        return frozenset({self.sql_tools_target, self.poi_tools_target, *self.allowed_tool_targets})

    @property
    def judge_endpoints(self) -> frozenset[str]:
        """The judge endpoints a spec's ``endpoint`` may name (without a trailing slash)."""
        return frozenset(e.rstrip("/") for e in (self.judge_endpoint, *self.allowed_judge_endpoints) if e)

    @property
    def judge_checkpoints(self) -> frozenset[str]:
        """The local judge checkpoints a spec's ``model`` may name with backend ``hf``."""
        return frozenset(m for m in (self.judge_model, *self.allowed_judge_checkpoints) if m)
