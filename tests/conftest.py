"""Shared fixtures: real tool servers on 127.0.0.1 (port 0, bound by gRPC) over real
SQLite files. Nothing of ours is mocked; every server and client is closed at teardown.

Helpers are handed out as fixtures (factories) rather than imported from this file,
because the test folders are not packages.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import sqlite3
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from pydantic import BaseModel, Field
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from rlyard.client import RetryPolicy, ToolClient
from rlyard.domain import ImagePart, ToolResult
from rlyard.server import RunningServer, ServiceDefinition, start_server
from rlyard.settings import ServerSettings
from rlyard.tls import ClientTLS
from tool_servers.app import build_executor, tool_service
from tool_servers.executor import ToolExecutor
from tool_servers.poi.settings import PoiSettings
from tool_servers.registry import ToolContext
from tool_servers.session import Session
from tool_servers.settings import ToolServerSettings
from tool_servers.sql.settings import SqlSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
SPIDER_DB_DIR = REPO_ROOT / "data" / "spider" / "database"

# The time limit the shared settings give a statement: long enough to catch a call
# "in flight", short enough to keep the suite fast.
SQL_TIMEOUT_S = 1.5


@dataclass(frozen=True)
class Repo:
    """Where things live in the checkout."""

    root: Path
    python: Path
    spider_db_dir: Path
    spider_dev_json: Path


@pytest.fixture(scope="session")
def repo() -> Repo:
    """Paths of the checkout (the venv's python runs the subprocess tests)."""
    python = REPO_ROOT / ".venv" / "bin" / "python"
    assert python.exists(), f"expected the project venv at {python}"
    assert SPIDER_DB_DIR.is_dir(), f"expected the Spider databases under {SPIDER_DB_DIR}"
    return Repo(REPO_ROOT, python, SPIDER_DB_DIR, REPO_ROOT / "data" / "spider" / "dev.json")


@pytest.fixture(scope="session")
def endless_count_sql() -> str:
    """A statement that never ends on its own: only the tool's time limit stops it."""
    return "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


@dataclass(frozen=True)
class Pki:
    """The files ``rlyard certs`` wrote, and a second, unrelated CA's."""

    out: Path
    other: Path

    def tls(self, name: str) -> Path:
        return self.out / "tls" / name

    def server(self, **kwargs: Any) -> ServerSettings:
        """Server settings on 127.0.0.1:0 with the made server certificate."""
        return ServerSettings(host="127.0.0.1", port=0, tls_cert=self.tls("server.pem"),
                              tls_key=self.tls("server-key.pem"), **kwargs)

    def mutual(self, **kwargs: Any) -> ServerSettings:
        """... and client certificates required, signed by the made CA."""
        return self.server(tls_client_ca=self.tls("ca.pem"), tls_require_client_cert=True, **kwargs)

    def client(self, *, cert: bool = True) -> ClientTLS:
        """TLS trusting the made CA, with the made client certificate (``cert``)."""
        if not cert:
            return ClientTLS(self.tls("ca.pem"))
        return ClientTLS(self.tls("ca.pem"), self.tls("client.pem"), self.tls("client-key.pem"))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """TLS files and tokens that ``rlyard certs`` (``write_certs``) made for the default table, and an
    unrelated CA's (tests of TLS and tokens between services)."""
    from rlyard_app.certs import make_tls, write_certs
    from rlyard_app.services import DEFAULT_TABLE, load_table

    root = tmp_path_factory.mktemp("pki")
    write_certs(load_table(DEFAULT_TABLE), root / "secrets")
    other = root / "other"
    other.mkdir()
    for name, pem in make_tls(["localhost", "127.0.0.1"]).items():
        (other / name).write_bytes(pem)
    return Pki(root / "secrets", other)


@dataclass(frozen=True)
class ToolSetup:
    """A tool server's settings and its families' settings."""

    settings: ToolServerSettings
    families: tuple[Any, ...]

    def service(self) -> ServiceDefinition:
        """The tool server's ``ServiceDefinition``."""
        return tool_service(self.settings, self.families)

    def executor(self) -> tuple[ToolExecutor, ToolContext]:
        """The tools behind an executor, in process."""
        return build_executor(self.settings, self.families)


@pytest.fixture
def tool_settings(repo: Repo) -> Callable[..., ToolSetup]:
    """Factory of a tool server's settings over the Spider databases: ``sql={...}`` and
    ``poi={...}`` override fields of the families' settings, other keywords the server's."""

    def make(*, sql: dict[str, Any] | None = None, poi: dict[str, Any] | None = None, **server: Any) -> ToolSetup:
        sql_values: dict[str, Any] = {"db_dir": repo.spider_db_dir, "timeout_s": SQL_TIMEOUT_S, **(sql or {})}
        return ToolSetup(ToolServerSettings(**server), (SqlSettings(**sql_values), PoiSettings(**(poi or {}))))

    return make


StartTools = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def start_tools(tool_settings: Callable[..., ToolSetup]) -> AsyncIterator[StartTools]:
    """Factory: start a real tool server on 127.0.0.1:0; every one is stopped at teardown.

    ``await start_tools(server=ServerSettings(...), definition=..., **tool_overrides)``.
    """
    started: list[RunningServer] = []

    async def start(
        *,
        server: ServerSettings | None = None,
        definition: ServiceDefinition | None = None,
        **tool_overrides: Any,
    ) -> RunningServer:
        if definition is None:
            definition = tool_settings(**tool_overrides).service()
        running = await start_server(definition, server or ServerSettings(host="127.0.0.1", port=0))
        started.append(running)
        return running

    yield start
    for running in reversed(started):
        await running.stop(0)


MakeClient = Callable[..., ToolClient]


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """Factory of ``ToolClient``s (closed at teardown); defaults: 10 s deadline, 4 attempts."""
    clients: list[ToolClient] = []

    def make(target: str | RunningServer, **kwargs: Any) -> ToolClient:
        address = target.address if isinstance(target, RunningServer) else target
        kwargs.setdefault("timeout", 10.0)
        kwargs.setdefault("retry", RetryPolicy(max_attempts=4, initial_backoff_s=0.02, max_backoff_s=0.1))
        client = ToolClient(address, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def tool_server(start_tools: StartTools) -> RunningServer:
    """One tool server with the default tools over the Spider databases."""
    return await start_tools()


@pytest.fixture
async def client(tool_server: RunningServer, make_client: MakeClient) -> ToolClient:
    """A client of ``tool_server``."""
    return make_client(tool_server)


@pytest.fixture
async def session_id(client: ToolClient) -> str:
    """An open session on the ``concert_singer`` database."""
    return await client.open_session({"db_id": "concert_singer"})


@pytest.fixture
def spider_copy(tmp_path: Path, repo: Repo) -> Callable[[str], Path]:
    """Factory: copy a Spider database into ``tmp_path/dbs/<db_id>/<db_id>.sqlite``."""

    def copy(db_id: str) -> Path:
        target = tmp_path / "dbs" / db_id / f"{db_id}.sqlite"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo.spider_db_dir / db_id / f"{db_id}.sqlite", target)
        return target

    return copy


@pytest.fixture
def blob_db_dir(tmp_path: Path) -> Path:
    """A flat db directory with ``blobs.sqlite``: a table of 25 rows that holds a blob,
    a float, a NULL and a text with a newline and a pipe."""
    db_dir = tmp_path / "flat"
    db_dir.mkdir()
    conn = sqlite3.connect(db_dir / "blobs.sqlite")
    with conn:
        conn.execute(
            "CREATE TABLE item (id INTEGER PRIMARY KEY, data BLOB, score REAL, note TEXT NOT NULL)"
        )
        conn.executemany(
            "INSERT INTO item VALUES (?, ?, ?, ?)",
            [(i, bytes([i, 255 - i]), i / 4, f"n{i}") for i in range(1, 26)],
        )
        conn.execute("UPDATE item SET score = NULL, note = 'a|b' || char(10) || 'c' WHERE id = 2")
    conn.close()
    return db_dir


# ---- the graph memory service on its own event loop (usable from synchronous and async tests)

@dataclass
class MemoryServers:
    """Real memory services on 127.0.0.1 over SQLite files, each on the fixture's own event loop
    (a daemon thread), so a test can stop one in the middle of a synchronous run."""

    thread: Any                       # trainer.rollout.EngineThread
    default_db: Path
    started: list[RunningServer] = field(default_factory=list)

    def start(self, *, db: Path | None = None, port: int = 0, **settings: Any) -> RunningServer:
        """A memory service over ``db`` (default: one file per test) on ``port`` (0: the kernel
        picks), SERVING (store migrated, MiniLM loaded); ``settings`` override ``MemorySettings``."""
        from memory_service.app import memory_service
        from memory_service.settings import MemorySettings

        definition = memory_service(MemorySettings(db_url=f"sqlite:///{db or self.default_db}", **settings))

        async def up() -> RunningServer:
            running = await start_server(definition, ServerSettings(host="127.0.0.1", port=port))
            await running.wait_ready(120)
            return running

        running: RunningServer = self.thread.run(up(), timeout=180)
        self.started.append(running)
        return running

    def stop(self, running: RunningServer) -> None:
        """Stop one service now (its port then refuses connections)."""
        self.thread.run(running.stop(0), timeout=60)
        self.started.remove(running)


@pytest.fixture
def memory_servers(tmp_path: Path) -> Iterator[MemoryServers]:
    """Factory of real memory services (``memory_servers.start(...)``); all stop at teardown."""
    from trainer.rollout import EngineThread

    with EngineThread(name="memory-service") as thread:
        servers = MemoryServers(thread, tmp_path / "memory.sqlite")
        yield servers
        for running in reversed(list(servers.started)):
            servers.stop(running)


# ---- a scripted OpenAI-compatible chat server (a judge model's endpoint, not one of our services)

@dataclass(frozen=True)
class Reply:
    """One scripted answer of ``ChatServer``: a chat completion whose message holds
    ``content``, or ``status`` with a raw ``body``; ``hang`` answers only at shutdown."""

    content: str | None = None
    status: int = 200
    body: str | None = None
    hang: bool = False


@dataclass
class ChatServer:
    """An OpenAI-compatible ``/v1/chat/completions`` server with scripted replies, or, with
    ``respond``, the content that function gives for the request's JSON (a reply that depends on
    what is asked, not on when: concurrent requests arrive in any order)."""

    replies: deque[Reply]
    respond: Callable[[Any], str] | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    @property
    def url(self) -> str:
        """The API base, as a judge endpoint is configured."""
        return f"http://127.0.0.1:{self.port}/v1"

    def answer(self, path: str, headers: dict[str, str], payload: Any) -> tuple[int, str]:
        self.requests.append({"path": path, "headers": headers, "json": payload})
        if path != "/v1/chat/completions":
            return 404, json.dumps({"error": {"message": f"no route {path}"}})
        if self.respond is not None:
            reply = Reply(self.respond(payload))
        elif not self.replies:
            return 500, json.dumps({"error": {"message": "the test scripted no more replies"}})
        else:
            reply = self.replies.popleft()
        if reply.hang:
            self.stopping.wait(10.0)
        if reply.body is not None or reply.status != 200:
            return reply.status, reply.body or ""
        completion = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "model": payload.get("model", "") if isinstance(payload, dict) else "",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": reply.content}, "finish_reason": "stop"}
            ],
        }
        return 200, json.dumps(completion)


def _handler(server: ChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode("utf-8", "replace")
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, body = server.answer(self.path, headers, payload)
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                pass

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            return

    return Handler


StartChatServer = Callable[..., ChatServer]


@pytest.fixture
def chat_server() -> Iterator[StartChatServer]:
    """Factory: ``chat_server(*replies)`` starts a scripted server; all stop at teardown.

    A reply is the content of a chat completion (``str``) or the fields of a ``Reply``
    (``dict``: ``status``, ``body``, ``content``, ``hang``); the server answers them in order.
    ``chat_server(respond=fn)`` answers each request with ``fn(request JSON)`` instead.
    """
    running: list[tuple[ChatServer, ThreadingHTTPServer, threading.Thread]] = []

    def start(*replies: str | dict[str, Any], respond: Callable[[Any], str] | None = None) -> ChatServer:
        script = [Reply(r) if isinstance(r, str) else Reply(**r) for r in replies]
        server = ChatServer(deque(script), respond=respond)
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
        httpd.daemon_threads = True
        server.port = httpd.server_address[1]
        thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, name=f"chat-server-{server.port}", daemon=True
        )
        thread.start()
        running.append((server, httpd, thread))
        return server

    yield start
    for server, httpd, thread in running:
        server.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# ---------------------------------------------------------------- image tool plug-ins of the tests


def _png(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30), noise: bool = False) -> bytes:
    """A real PNG (random pixels when ``noise``: it does not compress)."""
    image = Image.new("RGB", (width, height), color)
    if noise:
        image = Image.frombytes("RGB", (width, height), random.Random(width).randbytes(width * height * 3))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


class ShowArgs(BaseModel):
    image_id: str = Field(description="an image of the session")


class MakeArgs(BaseModel):
    side: int = Field(ge=1, le=2000, description="side of a square noise image, in pixels")


class ShowImage:
    """Returns an image of the session (what an image tool's 'revisit' does)."""

    name = "test_show_image"
    description = "Show an image of the session again."
    Args = ShowArgs

    def __init__(self, ctx: ToolContext) -> None:
        self.ctx = ctx

    def validate_context(self, context: Mapping[str, str]) -> None:
        """Any context."""

    async def call(self, args: ShowArgs, session: Session) -> ToolResult:
        image = session.images.get(args.image_id)
        if image is None:
            return ToolResult.error(f"no image {args.image_id!r} in this session; images: {sorted(session.images)}")
        return ToolResult(content=(ImagePart(image.data, image.mime_type, image.width, image.height, image.image_id),),
                          structured={"image_id": image.image_id, "bytes": len(image.data)})


class MakeImage:
    """Returns a new noise image of the given side (big results on demand)."""

    name = "test_make_image"
    description = "Make a square image."
    Args = MakeArgs

    def __init__(self, ctx: ToolContext) -> None:
        self.ctx = ctx

    def validate_context(self, context: Mapping[str, str]) -> None:
        """Any context."""

    async def call(self, args: MakeArgs, session: Session) -> ToolResult:
        data = _png(args.side, args.side, noise=True)
        return ToolResult(content=(ImagePart(data, "image/png", args.side, args.side, f"made-{args.side}"),))


@pytest.fixture
def make_png() -> Callable[..., bytes]:
    """Factory: ``make_png(width, height, color=..., noise=False)``, a real PNG."""
    return _png


@pytest.fixture
def image_tools(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Two tool plug-ins of the tests' own, registered in a copy of the registry: ``test_show_image``
    returns an image of the session by id, ``test_make_image`` a new noise PNG of a given side."""
    from tool_servers import registry

    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))
    registry.register(ShowImage)
    registry.register(MakeImage)
    yield


# ---------------------------------------------------------------- the tiny policy
# A tiny random Qwen2 with a byte-level BPE tokenizer trained here, saved with ``save_pretrained``
# so that it loads like any checkpoint. Built once per session (about a second); independent of
# ``trainer/model/`` on purpose.

# Single-token markers. The chat markers and the pad are special (as in Qwen2.5); the tool and
# reasoning markers are ordinary added tokens, so ``decode`` keeps them by default.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MARKER_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
                 "<think>", "</think>", "<answer>", "</answer>"]

_WORDS = ["select", "name", "from", "singer", "where", "age", "count", "the", "of", "answer",
          "query", "table", "concert", "stadium", "how", "many", "are", "there", "think", "tool"]


def _corpus() -> list[str]:
    """A few hundred strings in the shape of agent turns (text, JSON tool calls, SQL)."""
    lines: list[str] = []
    for i in range(300):
        a, b, c = _WORDS[i % 20], _WORDS[(i * 7) % 20], _WORDS[(i * 13) % 20]
        lines.append(f"{a} {b} {c} {i}")
        lines.append(f'{{"name": "sql_query", "arguments": {{"query": "SELECT {a} FROM {b} LIMIT {i}"}}}}')
        lines.append(f"Let me {a} the {b}: {c}s are {i % 17}. Ünïcödé ✓ {i}")
    return lines


def build_tiny_checkpoint(directory: Path) -> Path:
    """Train the tokenizer, build a ~0.7M-parameter random Qwen2 and save both in ``directory``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_tokens([AddedToken(m, special=False, normalized=False) for m in MARKER_TOKENS])
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", clean_up_tokenization_spaces=False
    )
    hf_tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    config = Qwen2Config(
        vocab_size=len(hf_tok), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, initializer_range=0.2,
        eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(directory)
    hf_tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the tiny random Qwen2 checkpoint (model + tokenizer)."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerFast:
    """The tiny checkpoint's tokenizer, loaded back with ``AutoTokenizer``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    return tokenizer


@pytest.fixture
def rl_tasks(tmp_path: Path) -> Path:
    """Four one-turn QA tasks ("how many singer i" -> "i") for short GRPO runs of the tiny policy."""
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps({"task_id": f"q{i}", "question": f"how many singer {i}", "tools": [],
                                        "ground_truth": {"answers": [str(i)]}}) + "\n" for i in range(4)))
    return path
