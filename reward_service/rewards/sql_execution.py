"""``sql_execution``: execution match of a predicted SQL query against the gold query.

Both queries run on the SQL tool server over gRPC (one-off ``sql_query`` calls
with context ``{"db_id": ..., "purpose": "verification"}``), so they run under the
guards the policy's tool has, but with the tool's verification caps
(``RLYARD_TOOLS_SQL_VERIFY_MAX_ROWS``/``_BYTES``) instead of the model's, so that
full results are compared; their rows are compared under one of two official semantics:

- ``spider`` (default), after taoyds/test-suite-sql-eval ``exec_eval.eval_exec_match``:
  both queries get ``postprocess`` (``> =`` → ``>=`` …) and, unless
  ``keep_distinct``, ``remove_distinct`` (sqlparse tokens); ``YEAR(CURDATE())`` →
  2020 before execution; row order matters only when the processed gold query
  contains ``order by``; rows compare as a multiset, up to a permutation of columns.
- ``bird``, after DAMO-ConvAI ``bird/llm/src/evaluation.py``: the raw queries run
  as given and ``set(pred_rows) == set(gold_rows)``.

Value 1.0 on a match, else 0.0. A prediction that fails (SQL error, refused
statement, past the tool's time limit) scores 0 and the explanation says which.

The prediction is ``item.text``; the SQL is the content of the last
``<answer>...</answer>`` block if there is one, then of the last Markdown code
fence (```` ```sql ````) if there is one (see ``_sql_compare.extract_sql``).
The ground truth is ``{"db_id": ..., "query": ...}`` (BIRD's ``"SQL"`` key is
accepted for ``query``).

Failures that are not the model's:

- the tool server unreachable, past the deadline, or a result carrying
  ``system_error`` → ``RewardSystemError`` (the trajectory is dropped);
- the gold query fails with an SQL error, or names a database the server lacks →
  ``RewardInputError`` (a data problem); the gold query past the tool's time limit
  → ``RewardSystemError`` (raise ``RLYARD_TOOLS_SQL_TIMEOUT_S``);
- rows cut by the tool's verification caps → ``RewardSystemError`` (raise
  ``RLYARD_TOOLS_SQL_VERIFY_MAX_ROWS`` / ``_BYTES``), except when the
  verdict is already certain: under ``spider`` a cut prediction whose row count
  differs from the (complete) gold result's, under ``bird`` a cut prediction whose
  rows already include one the gold lacks — both score 0 exactly as the official
  code would.

The CPU work (sqlparse, decoding and comparing rows) runs in the context's worker
threads (``RLYARD_REWARD_WORKER_THREADS``), so a slow item never holds up the
service's event loop and the other requests on it.

Gold results are cached per service in an LRU (``RLYARD_REWARD_GOLD_CACHE_SIZE``
entries, 0 disables it) keyed by (tool-server target, db_id, the gold SQL as
executed); concurrent misses of one key share one tool call.

Limits: a prediction over ``max_text_chars`` (100,000; ``RLYARD_REWARD_TEXT_LIMITS``) is not
parsed and scores 0; a spec's ``tool_server`` must be one the service is configured with or allowed
(``RLYARD_REWARD_ALLOWED_TOOL_TARGETS``).

Per-step rewards (execution feedback): every assistant turn that called
``sql_query`` gets one step reward, 1.0 when all of its ``sql_query`` calls came
back without ``is_error``, else 0.0 (a call with no observation counts as failed).
A turn whose only trouble is a ``system_error`` observation gets no step reward:
the system, not the model, failed there. Observations are matched to calls by
``call_id``, else by position among the ``sql_query`` results of that turn and the
tool turns right after it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Any, Literal

import grpc
from pydantic import BaseModel, ConfigDict, Field
from sqlparse.exceptions import SQLParseError

from reward_service.registry import RewardContext, check_tool_server, register
from reward_service.rewards import _sql_compare as cmp
from reward_service.rewards._lru import AsyncLru
from reward_service.types import (
    RewardInputError,
    RewardKindName,
    RewardOutcome,
    RewardSystemError,
    StepReward,
)
from rlyard.domain import ScoringItem, ToolResult, Trajectory

logger = logging.getLogger(__name__)

SQL_TOOL = "sql_query"
# tool_servers/sql/_common.py: a one-off call with this context gets the verification caps
VERIFICATION_CONTEXT = {"purpose": "verification"}
CACHE_KEY = "sql_execution.gold_cache"
# tool_servers.sql.db._explain: "the query ran longer than the 2s time limit and was stopped; ..."
_TIMEOUT_PREFIX = "the query ran longer than"
_INPUT_CODES = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
_STATUS_NAMES = {status.value[0]: status.name for status in grpc.StatusCode}


class SqlExecutionParams(BaseModel):
    """Parameters of ``sql_execution``."""

    model_config = ConfigDict(extra="forbid")

    semantics: Literal["spider", "bird"] = Field(
        default="spider",
        description="spider: test-suite exec match (multiset, column permutations, order iff gold ORDER BY); "
        "bird: set(pred rows) == set(gold rows)",
    )
    keep_distinct: bool = Field(
        default=False, description="spider only: keep DISTINCT instead of removing it from both queries"
    )
    tool_server: str | None = Field(
        default=None, description="host:port of the SQL tool server (default RLYARD_REWARD_SQL_TOOLS_TARGET)"
    )


@dataclass(frozen=True)
class SqlRows:
    """A complete or cut result of one query."""

    rows: list[cmp.Row]
    truncated: bool = False
    total_at_least: int = 0      # rows fetched + rows counted past the caps
    total_exact: bool = True     # whether total_at_least is the exact count


@dataclass(frozen=True)
class SqlFailure:
    """The query failed in a way the model (or the data) is to blame for."""

    message: str

    @property
    def timed_out(self) -> bool:
        """Whether the tool's time limit stopped the query."""
        return self.message.startswith(_TIMEOUT_PREFIX)


CacheKey = tuple[str, str, str]

# Gold queries repeat across epochs and group members; sqlparse costs ~1.5 ms a query.
_prepare_gold = functools.lru_cache(maxsize=4096)(cmp.spider_prepare)


class GoldCache(AsyncLru[CacheKey, SqlRows]):
    """An LRU of gold results; concurrent misses of one key share one fetch (``_lru.AsyncLru``)."""


def gold_cache(ctx: RewardContext) -> GoldCache:
    """The service-wide gold cache in ``ctx.shared``."""
    cache = ctx.shared.get(CACHE_KEY)
    if not isinstance(cache, GoldCache):
        cache = ctx.shared[CACHE_KEY] = GoldCache(ctx.settings.gold_cache_size)
    return cache


def parse_ground_truth(ground_truth: Any) -> tuple[str, str]:
    """``(db_id, gold_sql)`` from ``{"db_id": ..., "query": ...}``; RewardInputError if absent."""
    if not isinstance(ground_truth, dict):
        raise RewardInputError(
            'sql_execution needs ground_truth {"db_id": ..., "query": ...}; '
            f"got {type(ground_truth).__name__}"
        )
    db_id = ground_truth.get("db_id")
    query = ground_truth.get("query", ground_truth.get("SQL"))
    missing = [name for name, v in (("db_id", db_id), ("query", query)) if not isinstance(v, str) or not v.strip()]
    if missing:
        raise RewardInputError(f"sql_execution: ground_truth lacks {' and '.join(missing)} (non-empty strings)")
    assert isinstance(db_id, str) and isinstance(query, str)
    return db_id, query


# --- per-step execution feedback ------------------------------------------------


def _results_after(trajectory: Trajectory, position: int) -> list[ToolResult]:
    """sql_query results of the turn at ``position`` and of the tool turns right after it."""
    turns = trajectory.turns
    found = [r for r in turns[position].tool_results if r.name in (SQL_TOOL, "")]
    for turn in turns[position + 1:]:
        if turn.role != "tool":
            break
        found.extend(r for r in turn.tool_results if r.name in (SQL_TOOL, ""))
    return found


def sql_step_rewards(trajectory: Trajectory | None) -> list[StepReward]:
    """One step reward per assistant turn that ran ``sql_query`` (see the module doc)."""
    if trajectory is None:
        return []
    call_ids = {c.call_id for c in trajectory.tool_calls if c.call_id}
    by_id = {r.call_id: r for t in trajectory.turns for r in t.tool_results if r.call_id in call_ids}
    steps: list[StepReward] = []
    for position, turn in enumerate(trajectory.turns):
        calls = [c for c in turn.tool_calls if c.name == SQL_TOOL]
        if turn.role != "assistant" or not calls:
            continue
        # results that answer no call by id, for calls whose id matches no result
        nearby = [r for r in _results_after(trajectory, position) if r.call_id not in by_id]
        failed = system = False
        for call in calls:
            result = by_id.get(call.call_id) if call.call_id else None
            if result is None:
                result = nearby.pop(0) if nearby else None
            if result is not None and result.system_error_code != 0:
                system = True  # checked first: the system's failure, whatever is_error says
            elif result is None or result.is_error:
                failed = True
        if failed:
            steps.append(StepReward(turn.index, 0.0))
        elif not system:
            steps.append(StepReward(turn.index, 1.0))
    return steps


# --- the reward -------------------------------------------------------------------


def _describe_rpc_error(exc: grpc.aio.AioRpcError) -> str:
    return f"{exc.code().name}: {exc.details()}"


@register
class SqlExecution:
    """Execution match of the predicted SQL against the gold SQL, through the SQL tool server."""

    name = "sql_execution"
    description = (
        "1 if the predicted SQL returns the same rows as the gold SQL (Spider test-suite or BIRD "
        "semantics), executed on the SQL tool server; per-step 1/0 for sql_query calls without/with errors."
    )
    kind = RewardKindName.TOOL_VERIFICATION
    Params = SqlExecutionParams
    # sqlparse takes about a second for 100,000 characters (and gives up on longer statements)
    max_text_chars = 100_000

    def __init__(self, ctx: RewardContext) -> None:
        self.ctx = ctx

    def check_params(self, params: SqlExecutionParams) -> None:
        """A spec may name only a configured or allowed tool server (the service dials it)."""
        check_tool_server(params.tool_server, self.ctx.settings)

    async def _run(self, target: str | None, db_id: str, sql: str, role: str) -> SqlRows | SqlFailure:
        """Run ``sql`` on the tool server; system failures raise RewardSystemError."""
        client = self.ctx.tool_client(target)
        try:
            result = await client.call_tool(
                SQL_TOOL, {"query": sql}, context={"db_id": db_id, **VERIFICATION_CONTEXT}
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _INPUT_CODES:
                raise RewardInputError(
                    f"the SQL tool server at {client.target} refused db_id {db_id!r} ({_describe_rpc_error(exc)}); "
                    "check ground_truth.db_id and the server's RLYARD_TOOLS_SQL_DB_DIR"
                ) from None
            raise RewardSystemError(
                f"SQL tool server {client.target} failed on the {role} query: {_describe_rpc_error(exc)}"
            ) from None
        return await self.ctx.run_blocking(_rows_of, result, client.target, role)

    async def _gold(self, target: str | None, db_id: str, sql: str) -> SqlRows:
        resolved = target or self.ctx.settings.sql_tools_target

        async def fetch() -> SqlRows:
            got = await self._run(target, db_id, sql, "gold")
            if isinstance(got, SqlFailure):
                if got.timed_out:
                    raise RewardSystemError(
                        f"the gold query of {db_id!r} ran past the SQL tool's time limit ({got.message}); "
                        "raise RLYARD_TOOLS_SQL_TIMEOUT_S on the tool server"
                    )
                raise RewardInputError(f"the gold query fails on {db_id!r}: {got.message} (gold: {sql})")
            if got.truncated:
                raise RewardSystemError(
                    f"the gold result on {db_id!r} was cut by the SQL tool's verification caps at {len(got.rows)} "
                    "rows, so it cannot be compared exactly; raise RLYARD_TOOLS_SQL_VERIFY_MAX_ROWS (and "
                    "RLYARD_TOOLS_SQL_VERIFY_MAX_BYTES) on the tool server"
                )
            return got

        return await gold_cache(self.ctx).get((resolved, db_id, sql), fetch)

    async def score(self, item: ScoringItem, params: SqlExecutionParams) -> RewardOutcome:
        """Execute prediction and gold, compare their rows, add per-step feedback."""
        db_id, gold_sql = parse_ground_truth(item.ground_truth)
        steps = sql_step_rewards(item.trajectory)
        spider = params.semantics == "spider"
        q = await self.ctx.run_blocking(_prepare, item.text, gold_sql, spider, params.keep_distinct)
        if q.pred_exec is None:
            await self._gold(params.tool_server, db_id, q.gold_exec)  # the gold must still be sound
            return RewardOutcome(0.0, q.why_not_run, steps)

        gold_res, pred_res = await asyncio.gather(
            self._gold(params.tool_server, db_id, q.gold_exec),
            self._run(params.tool_server, db_id, q.pred_exec, "predicted"),
            return_exceptions=True,
        )
        for res in (gold_res, pred_res):  # the system's failures first, then the data's
            if isinstance(res, RewardSystemError):
                raise res
        for res in (gold_res, pred_res):
            if isinstance(res, BaseException):
                raise res
        assert isinstance(gold_res, SqlRows)
        assert isinstance(pred_res, SqlRows | SqlFailure)

        if isinstance(pred_res, SqlFailure):
            what = "timed out" if pred_res.timed_out else "failed"
            return RewardOutcome(0.0, f"the predicted query {what}: {pred_res.message}", steps)
        order = spider and cmp.order_matters(q.gold_checked)
        value, why = await self.ctx.run_blocking(_compare, gold_res, pred_res, spider, order)
        label = "spider" + (", order matters" if order else "") if spider else "bird"
        return RewardOutcome(value, f"{why} [{label}]", steps)


@dataclass(frozen=True)
class _Queries:
    """The gold and predicted SQL as they run, or why the prediction does not run."""

    gold_checked: str              # what the ORDER BY rule reads
    gold_exec: str
    pred_exec: str | None          # None: nothing to run
    why_not_run: str = ""


def _prepare(text: str, gold_sql: str, spider: bool, keep_distinct: bool) -> _Queries:
    """Extract and preprocess both queries (regexes, sqlparse: CPU work for a worker thread)."""
    try:
        gold_checked, gold_exec = _prepare_gold(gold_sql, keep_distinct) if spider else (gold_sql, gold_sql)
    except (IndexError, SQLParseError) as exc:
        raise RewardInputError(f"the gold query could not be tokenised by sqlparse: {exc}") from None
    pred_sql = cmp.extract_sql(text)
    if not pred_sql:
        return _Queries(gold_checked, gold_exec, None, "no SQL in the prediction")
    try:
        pred_exec = cmp.spider_prepare(pred_sql, keep_distinct)[1] if spider else pred_sql
    except (IndexError, SQLParseError) as exc:
        return _Queries(gold_checked, gold_exec, None, f"the prediction could not be tokenised by sqlparse: {exc}")
    return _Queries(gold_checked, gold_exec, pred_exec)


def _compare(gold: SqlRows, pred: SqlRows, spider: bool, order: bool) -> tuple[float, str]:
    """The verdict and its explanation; a cut prediction raises unless the verdict is certain."""
    if pred.truncated:
        n_gold = len(gold.rows)
        if spider and (pred.total_at_least > n_gold or (pred.total_exact and pred.total_at_least != n_gold)):
            return 0.0, f"wrong: the prediction returns {_count(pred)} rows, the gold {len(gold.rows)}"
        gold_set = set(gold.rows)
        if not spider and any(row not in gold_set for row in pred.rows):
            return 0.0, "wrong: the prediction returns rows the gold lacks"
        raise RewardSystemError(
            f"the predicted result was cut by the SQL tool's verification caps at {len(pred.rows)} rows and cannot "
            "be compared exactly; raise RLYARD_TOOLS_SQL_VERIFY_MAX_ROWS (and RLYARD_TOOLS_SQL_VERIFY_MAX_BYTES) "
            "on the tool server"
        )
    match = cmp.result_eq(gold.rows, pred.rows, order) if spider else cmp.bird_eq(gold.rows, pred.rows)
    if match:
        return 1.0, f"correct: same result as the gold ({len(gold.rows)} rows)"
    g_cols = len(gold.rows[0]) if gold.rows else 0
    p_cols = len(pred.rows[0]) if pred.rows else 0
    if spider and len(gold.rows) != len(pred.rows):
        return 0.0, f"wrong: {len(pred.rows)} rows, the gold has {len(gold.rows)}"
    if gold.rows and pred.rows and g_cols != p_cols:
        return 0.0, f"wrong: {p_cols} columns, the gold has {g_cols}"
    return 0.0, f"wrong: different rows ({len(pred.rows)} vs the gold's {len(gold.rows)})"


def _count(rows: SqlRows) -> str:
    return str(rows.total_at_least) if rows.total_exact else f"at least {rows.total_at_least}"


def _rows_of(result: ToolResult, target: str, role: str) -> SqlRows | SqlFailure:
    """The rows of a ``sql_query`` result, a model-side failure, or RewardSystemError."""
    if result.system_error is not None:
        code = _STATUS_NAMES.get(result.system_error.code, str(result.system_error.code))
        raise RewardSystemError(
            f"SQL tool server {target} reported a system error on the {role} query: "
            f"{code}: {result.system_error.message}"
        )
    if result.is_error:
        return SqlFailure(result.text or "error")
    try:
        structured = result.structured
        rows = cmp.decode_rows(structured["rows"])
        truncated = bool(structured.get("truncated", False))
        counted = int(structured.get("more_rows", 0))
        exact = bool(structured.get("more_rows_exact", True))
    except (ValueError, KeyError, TypeError) as exc:
        raise RewardSystemError(
            f"the {role} result from {target} has no readable structured rows ({exc}); is it the SQL tool server?"
        ) from None
    return SqlRows(rows, truncated, len(rows) + counted, exact)
