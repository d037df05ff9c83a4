"""The memory store on SQLAlchemy 2: SQLite (a file, WAL) embedded, PostgreSQL in Compose and
Kubernetes. Synchronous; the service calls it on worker threads.

Concurrent writers lose nothing: on SQLite every write transaction starts with ``BEGIN IMMEDIATE``
(one writer at a time, others wait up to ``busy_timeout``); on PostgreSQL a write that reads
before it writes locks the rows it reads (``SELECT ... FOR UPDATE``, the bookkeeping row first,
so update rounds are serialised and generation numbers follow commit order)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError

from memory_service import schema
from memory_service.fsm import transitions
from memory_service.utility import UtilityParams, next_baseline, updated
from rlyard.domain import DecisionPath, MetaCognition, Trajectory, UtilityUpdate
from rlyard.errors import NotFound, Unavailable

MIGRATIONS = Path(__file__).parent / "migrations"
MAX_ID_CHARS = 256   # the width of trajectory ids (trajectories.id)
SQLITE_BUSY_TIMEOUT_MS = 30_000
_MIGRATION_LOCK = 0x726C79617264   # PostgreSQL advisory lock key of schema migrations ("rlyard")


@dataclass(frozen=True)
class StoredPath:
    """A decision path as Distill reads it."""

    id: str
    states: tuple[str, ...]
    reward: float
    task_text: str = ""
    final_answer: str = ""


@dataclass(frozen=True)
class NewMetaCognition:
    """What Distill adds: its text, de-duplication key, sources and MiniLM embedding (float32 bytes)."""

    task_type: str
    rule_key: str
    text: str
    source_path_ids: tuple[str, ...]
    embedding: bytes


@dataclass(frozen=True)
class IndexRow:
    """What the retrieval index keeps of a meta-cognition: the record as stored (utility as of
    ``last_round``) and its embedding."""

    record: MetaCognition
    last_round: int
    embedding: bytes


@dataclass(frozen=True)
class Counts:
    """Rows per layer."""

    trajectories: int
    states: int
    paths: int
    meta_cognitions: int


def _sqlite_engine(url: str, immediate: bool) -> Engine:
    """A SQLite engine in WAL mode; ``immediate``: every transaction takes the write lock at BEGIN."""
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None     # SQLAlchemy's "begin" event issues BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (several processes may call it at once)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def _turns_json(trajectory: Trajectory) -> str:
    """The trajectory as JSON (images as their placeholders: the memory needs what happened, not pixels)."""
    turns = [{
        "index": t.index, "role": t.role, "text": t.text, "metadata": t.metadata,
        "tool_calls": [{"call_id": c.call_id, "name": c.name, "arguments_json": c.arguments_json}
                       for c in t.tool_calls],
        "tool_results": [{"call_id": r.call_id, "name": r.name, "is_error": r.is_error, "text": r.observation,
                          "system_error": r.system_error_code} for r in t.tool_results],
    } for t in trajectory.turns]
    return json.dumps({"turns": turns, "metadata": trajectory.metadata, "session_id": trajectory.session_id})


def trajectory_bytes(trajectory: Trajectory) -> int:
    """Bytes the trajectory takes in the store (its JSON form, UTF-8)."""
    return len(_turns_json(trajectory).encode())


def path_id(trajectory_id: str) -> str:
    """The decision path's id: derived from the trajectory's, so recording it twice finds the same path."""
    return "path-" + uuid.uuid5(uuid.NAMESPACE_URL, "rlyard-trajectory:" + trajectory_id).hex


class MemoryStore:
    """The three layers of the memory behind one SQLAlchemy URL; migrated to head on open."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.writer = _sqlite_engine(url, immediate=True)
            self.reader = _sqlite_engine(url, immediate=False)
        else:
            self.writer = self.reader = create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)
        self.url = parsed.render_as_string(hide_password=True)
        with self._errors():
            migrate(self.writer)

    def close(self) -> None:
        """Close every pooled connection."""
        self.writer.dispose()
        if self.reader is not self.writer:
            self.reader.dispose()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """A database that cannot be reached (or stays locked) is UNAVAILABLE: the caller may retry."""
        try:
            yield
        except OperationalError as exc:
            raise Unavailable(f"the memory store {self.url} is unavailable: {str(exc.orig or exc).strip()}") from exc

    def _insert(self, table: Any) -> Any:
        """The dialect's INSERT, which knows ON CONFLICT."""
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    def _lock_state(self, conn: Connection) -> Any:
        """The bookkeeping row, locked for the rest of the transaction."""
        return conn.execute(select(schema.memory_state).where(schema.memory_state.c.id == 1).with_for_update()).one()

    # ------------------------------------------------------------- trajectories and paths

    def record(self, trajectory: Trajectory, reward: float, task_type: str, task_text: str,
               states: Sequence[str], success: bool) -> DecisionPath:
        """Store the trajectory, its path and the path's transitions; a trajectory id already
        recorded returns its stored path and changes nothing."""
        with self._errors():
            existing = self._path_of(trajectory.trajectory_id)
            if existing is not None:
                return existing
            now = time.time()
            pid = path_id(trajectory.trajectory_id)
            try:
                with self.writer.begin() as conn:
                    conn.execute(schema.trajectories.insert().values(
                        id=trajectory.trajectory_id, task_id=trajectory.task_id, task_type=task_type,
                        task_text=task_text, turns_json=_turns_json(trajectory), final_answer=trajectory.final_answer,
                        status=str(trajectory.status), reward=reward, created_at=now))
                    conn.execute(schema.decision_paths.insert().values(
                        id=pid, trajectory_id=trajectory.trajectory_id, task_type=task_type,
                        states_json=json.dumps(list(states)), reward=reward, created_at=now))
                    self._count_states(conn, states, task_type, success)
            except IntegrityError:   # recorded by a concurrent call since we looked
                existing = self._path_of(trajectory.trajectory_id)
                if existing is None:
                    raise
                return existing
            return DecisionPath(pid, tuple(states), reward, trajectory.trajectory_id)

    def _count_states(self, conn: Connection, states: Sequence[str], task_type: str, success: bool) -> None:
        """Upsert the visit counts of the states and the counts of the transitions (atomic increments)."""
        visits: dict[str, int] = {}
        for s in states:
            visits[s] = visits.get(s, 0) + 1
        for name, n in sorted(visits.items()):
            stmt = self._insert(schema.states).values(name=name, visits=n)
            conn.execute(stmt.on_conflict_do_update(index_elements=["name"],
                                                    set_={"visits": schema.states.c.visits + n}))
        pairs: dict[tuple[str, str], int] = {}
        for pair in transitions(states):
            pairs[pair] = pairs.get(pair, 0) + 1
        t = schema.transitions
        for (src, dst), n in sorted(pairs.items()):
            won = n if success else 0
            stmt = self._insert(t).values(task_type=task_type, src=src, dst=dst, count=n, successes=won)
            conn.execute(stmt.on_conflict_do_update(index_elements=["task_type", "src", "dst"],
                                                    set_={"count": t.c.count + n, "successes": t.c.successes + won}))

    def _path_of(self, trajectory_id: str) -> DecisionPath | None:
        p = schema.decision_paths
        with self.reader.connect() as conn:
            row = conn.execute(select(p).where(p.c.trajectory_id == trajectory_id)).first()
        if row is None:
            return None
        return DecisionPath(row.id, tuple(json.loads(row.states_json)), row.reward, row.trajectory_id)

    def paths(self, task_type: str) -> list[StoredPath]:
        """Every decision path of ``task_type``, oldest first."""
        p, t = schema.decision_paths, schema.trajectories
        with self._errors(), self.reader.connect() as conn:
            rows = conn.execute(select(p.c.id, p.c.states_json, p.c.reward, t.c.task_text, t.c.final_answer)
                                .join(t, t.c.id == p.c.trajectory_id).where(p.c.task_type == task_type)
                                .order_by(p.c.created_at, p.c.id)).all()
        return [StoredPath(r.id, tuple(json.loads(r.states_json)), r.reward, r.task_text, r.final_answer)
                for r in rows]

    def task_types(self) -> list[str]:
        """The task types that have paths."""
        p = schema.decision_paths
        with self._errors(), self.reader.connect() as conn:
            return [r[0] for r in conn.execute(select(p.c.task_type).distinct().order_by(p.c.task_type))]

    def transition_counts(self, task_type: str) -> dict[tuple[str, str], tuple[int, int]]:
        """(from, to) → (count, successes) of ``task_type``'s paths."""
        t = schema.transitions
        with self._errors(), self.reader.connect() as conn:
            rows = conn.execute(select(t.c.src, t.c.dst, t.c.count, t.c.successes)
                                .where(t.c.task_type == task_type)).all()
        return {(src, dst): (int(n), int(won)) for src, dst, n, won in rows}

    # ------------------------------------------------------------- meta-cognitions

    def rule_keys(self, task_type: str) -> set[str]:
        """The rule keys of ``task_type``'s meta-cognitions (what Distill must not add again)."""
        m = schema.meta_cognitions
        with self._errors(), self.reader.connect() as conn:
            return set(conn.execute(select(m.c.rule_key).where(m.c.task_type == task_type)).scalars())

    def add(self, new: Sequence[NewMetaCognition], utility: float) -> list[MetaCognition]:
        """Insert meta-cognitions with the prior ``utility``; one whose (task type, rule key) exists
        already is skipped. The ones inserted, in order."""
        m = schema.meta_cognitions
        created: list[MetaCognition] = []
        with self._errors(), self.writer.begin() as conn:
            state = self._lock_state(conn)
            generation = state.generation + 1
            now = time.time()
            for item in new:
                mid = "mc-" + uuid.uuid4().hex
                stmt = self._insert(m).values(
                    id=mid, task_type=item.task_type, rule_key=item.rule_key, text=item.text,
                    source_path_ids=json.dumps(list(item.source_path_ids)), utility=utility, uses=0,
                    last_round=state.round, generation=generation, embedding=item.embedding, created_at=now,
                    updated_at=now).on_conflict_do_nothing(index_elements=["task_type", "rule_key"]).returning(m.c.id)
                # RETURNING tells whether the row went in (rowcount is -1, "unknown", under psycopg)
                if conn.execute(stmt).first() is not None:
                    created.append(MetaCognition(mid, item.text, utility, item.task_type, 0, item.source_path_ids,
                                                 now, now))
            if created:
                conn.execute(update(schema.memory_state).where(schema.memory_state.c.id == 1)
                             .values(generation=generation))
        return created

    def update_utilities(self, updates: Sequence[UtilityUpdate], learning_rate: float,
                         params: UtilityParams) -> list[MetaCognition]:
        """One update round (``memory_service.utility``): each meta-cognition named gets its decay
        and REINFORCE step against the current baseline, then the baseline moves. All or nothing:
        an unknown id is NOT_FOUND and changes nothing. The meta-cognitions after the round, in
        the order of ``updates``."""
        m = schema.meta_cognitions
        ids = sorted({u.meta_cognition_id for u in updates})
        with self._errors(), self.writer.begin() as conn:
            state = self._lock_state(conn)
            rows = {r.id: r for r in conn.execute(select(m).where(m.c.id.in_(ids)).order_by(m.c.id)
                                                  .with_for_update())}
            missing = [i for i in ids if i not in rows]
            if missing:
                raise NotFound(f"no meta-cognition with id {', '.join(repr(i) for i in missing[:5])}"
                               + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""))
            round_ = state.round + 1
            generation = state.generation + 1
            now = time.time()
            current = {i: (r.utility, r.last_round, r.uses) for i, r in rows.items()}
            for u in updates:
                utility, last, uses = current[u.meta_cognition_id]
                utility = updated(utility, last, round_, u.delta, state.baseline, learning_rate, params)
                current[u.meta_cognition_id] = (utility, round_, uses + 1)
            for mid, (utility, last, uses) in current.items():
                conn.execute(update(m).where(m.c.id == mid).values(utility=utility, last_round=last, uses=uses,
                                                                   generation=generation, updated_at=now))
            baseline = next_baseline(state.baseline, [u.delta for u in updates], params)
            conn.execute(update(schema.memory_state).where(schema.memory_state.c.id == 1)
                         .values(round=round_, generation=generation, baseline=baseline))
        out = []
        for u in updates:
            r = rows[u.meta_cognition_id]
            utility, _, uses = current[u.meta_cognition_id]
            out.append(MetaCognition(r.id, r.text, utility, r.task_type, uses, tuple(json.loads(r.source_path_ids)),
                                     r.created_at, now))
        return out

    # ------------------------------------------------------------- what readers poll

    def state(self) -> tuple[int, int, float]:
        """(generation, round, baseline): a change of generation means meta-cognitions changed."""
        s = schema.memory_state
        with self._errors(), self.reader.connect() as conn:
            row = conn.execute(select(s.c.generation, s.c.round, s.c.baseline).where(s.c.id == 1)).one()
        return int(row.generation), int(row.round), float(row.baseline)

    def changed_since(self, generation: int) -> tuple[int, int, list[IndexRow]]:
        """(generation, round, rows written after ``generation``), read in one snapshot."""
        m, s = schema.meta_cognitions, schema.memory_state
        with self._errors(), self.reader.begin() as conn:
            state = conn.execute(select(s.c.generation, s.c.round).where(s.c.id == 1)).one()
            rows = conn.execute(select(m).where(m.c.generation > generation).order_by(m.c.created_at, m.c.id)).all()
        return (int(state.generation), int(state.round),
                [IndexRow(MetaCognition(r.id, r.text, r.utility, r.task_type, r.uses,
                                        tuple(json.loads(r.source_path_ids)), r.created_at, r.updated_at),
                          r.last_round, bytes(r.embedding)) for r in rows])

    def counts(self) -> Counts:
        """Rows per layer."""
        with self._errors(), self.reader.connect() as conn:
            def n(table: Any) -> int:
                return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

            return Counts(n(schema.trajectories), n(schema.states), n(schema.decision_paths),
                          n(schema.meta_cognitions))

