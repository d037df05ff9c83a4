"""TLS and tokens between services: real servers on 127.0.0.1 port 0 with certificates that
``rlyard certs`` makes in a temporary directory (rlyard_app/certs.py, rlyard/tls.py)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from reward_service.app import reward_service
from reward_service.settings import RewardSettings
from rlyard.client import NO_RETRY, ToolClient, make_channel
from rlyard.domain import ScoreStatus, ScoringItem, load_spec
from rlyard.errors import ConfigError, Unauthenticated
from rlyard.reward_client import RewardClient
from rlyard.server import RunningServer, start_server
from rlyard.settings import ServerSettings
from rlyard.tls import ClientSettings, ClientTLS, target_host
from rlyard_app.certs import launcher_tls, make_tls, write_certs
from rlyard_app.launcher import check_health
from rlyard_app.services import DEFAULT_TABLE, load_table

StartTools = Callable[..., Awaitable[RunningServer]]
Pki = Any   # tests/conftest.py: the files `rlyard certs` wrote (fixture ``pki``)
GT = {"db_id": "concert_singer", "query": "SELECT name, age FROM singer"}


async def _refused(client: ToolClient) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(client.list_tools(timeout=3.0), 10)
    return info.value


# --- TLS ----------------------------------------------------------------------------------


async def test_tls_call_works_and_plaintext_is_refused(pki: Pki, start_tools: StartTools,
                                                       make_client: Callable[..., ToolClient]) -> None:
    running = await start_tools(server=pki.server())
    tools = await make_client(running, retry=NO_RETRY, tls=pki.client(cert=False)).list_tools()
    assert "sql_query" in {t.name for t in tools}
    # a plaintext client gets no answer from a TLS port: the handshake never happens
    err = await _refused(make_client(running, retry=NO_RETRY))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_server_certificate_of_another_ca_is_refused(pki: Pki, start_tools: StartTools,
                                                             make_client: Callable[..., ToolClient]) -> None:
    running = await start_tools(server=pki.server())
    err = await _refused(make_client(running, retry=NO_RETRY, tls=ClientTLS(pki.other / "ca.pem")))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    # the made CA's name check: 127.0.0.1 is a SAN, a name that is not fails even with the right CA
    wrong_name = ClientTLS(pki.tls("ca.pem"), server_name="not-a-service")
    assert (await _refused(make_client(running, retry=NO_RETRY, tls=wrong_name))).code() == grpc.StatusCode.UNAVAILABLE
    renamed = ClientTLS(pki.tls("ca.pem"), server_name="sql-tools")   # a service name is a SAN too
    assert await make_client(running, retry=NO_RETRY, tls=renamed).list_tools()


async def test_mutual_tls_requires_a_client_certificate_of_the_ca(
        pki: Pki, start_tools: StartTools, make_client: Callable[..., ToolClient]) -> None:
    running = await start_tools(server=pki.mutual())
    assert await make_client(running, retry=NO_RETRY, tls=pki.client()).list_tools()
    err = await _refused(make_client(running, retry=NO_RETRY, tls=pki.client(cert=False)))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    foreign = ClientTLS(pki.tls("ca.pem"), pki.other / "client.pem", pki.other / "client-key.pem")
    assert (await _refused(make_client(running, retry=NO_RETRY, tls=foreign))).code() == grpc.StatusCode.UNAVAILABLE


async def test_make_channel_takes_tls_as_a_keyword(pki: Pki, start_tools: StartTools) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    running = await start_tools(server=pki.mutual())
    async with make_channel(running.address, 1024 * 1024, tls=pki.client()) as channel:
        resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


# --- tokens -------------------------------------------------------------------------------


async def test_no_or_wrong_token_is_unauthenticated_while_health_answers(
        pki: Pki, start_tools: StartTools, make_client: Callable[..., ToolClient]) -> None:
    running = await start_tools(server=pki.mutual(auth_token="tools-token"))
    for token in (None, "tools-toke", "other"):
        err = await _refused(make_client(running, retry=NO_RETRY, tls=pki.client(), auth_token=token))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, token
    anonymous = make_client(running, retry=NO_RETRY, tls=pki.client())
    assert await anonymous.health() == "SERVING"      # probes carry no token
    assert await make_client(running, retry=NO_RETRY, tls=pki.client(), auth_token="tools-token").list_tools()
    # the launcher's and `rlyard status`'s synchronous check too
    assert await asyncio.to_thread(check_health, running.address, 5.0, "", pki.client()) == "SERVING"
    assert await asyncio.to_thread(check_health, running.address, 2.0) == "UNREACHABLE"   # plaintext


@pytest.fixture
async def start_reward() -> AsyncIterator[Callable[..., Awaitable[RunningServer]]]:
    started: list[RunningServer] = []

    async def start(settings: RewardSettings, client: ClientSettings, server: ServerSettings) -> RunningServer:
        running = await start_server(reward_service(settings, client), server)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop(0)


async def test_per_target_tokens_reach_the_right_tool_server(
        pki: Pki, start_tools: StartTools, start_reward: Callable[..., Awaitable[RunningServer]]) -> None:
    """reward service → two tool servers over mutual TLS, each with its own token: one found by the
    target's host name, one by its whole address; the shared token opens neither."""
    a = await start_tools(server=pki.mutual(auth_token="token-a"))
    b = await start_tools(server=pki.mutual(auth_token="token-b"))
    target_a, target_b = f"localhost:{a.port}", b.address
    tls = {"tls_ca": pki.tls("ca.pem"), "tls_cert": pki.tls("client.pem"), "tls_key": pki.tls("client-key.pem")}
    settings = RewardSettings(sql_tools_target=target_a, allowed_tool_targets=(target_b,), tool_timeout_s=10.0)
    item = ScoringItem(item_id="i", prediction="SELECT Name, Age FROM singer", ground_truth=GT)
    on_a = load_spec(json.dumps({"sql_execution": 1.0}))
    on_b = load_spec(json.dumps({"sql_execution": {"weight": 1.0, "tool_server": target_b}}))

    async def score_with(client: ClientSettings) -> list[Any]:
        reward = await start_reward(settings, client, pki.mutual(auth_token="reward-token"))
        async with RewardClient(reward.address, timeout=30.0, retry=NO_RETRY, auth_token="reward-token",
                                tls=pki.client()) as rc:
            return [await rc.score(item, spec) for spec in (on_a, on_b)]

    right = ClientSettings(**tls, auth_token="shared", auth_tokens=("localhost=token-a", f"{target_b}=token-b"))
    scored = await score_with(right)
    assert [(r.status, r.total) for r in scored] == [(ScoreStatus.OK, 1.0), (ScoreStatus.OK, 1.0)]

    # only the shared token: both tool servers refuse it, and the reward says so
    shared_only = await score_with(ClientSettings(**tls, auth_token="shared"))
    assert [r.status for r in shared_only] == [ScoreStatus.SYSTEM_ERROR] * 2
    assert all("UNAUTHENTICATED" in r.error for r in shared_only), [r.error for r in shared_only]

    # the tokens swapped: each server refuses the other's
    swapped = await score_with(ClientSettings(**tls, auth_tokens=("localhost=token-b", f"{target_b}=token-a")))
    assert [r.status for r in swapped] == [ScoreStatus.SYSTEM_ERROR] * 2


async def test_a_routed_client_dials_tls_replicas_by_ip_checking_the_service_name(
        pki: Pki, start_tools: StartTools, tmp_path: Path) -> None:
    """Sessions routed over 2 TLS replicas on 127.0.0.1 whose certificate names the service only (as
    a pod's does): dialled by IP, the name to check is the routed name (``routed:///``) or
    ``RLYARD_CLIENT_TLS_SERVER_NAME`` (a static list); the token is found by the routed name."""
    from rlyard.routing import RoutedToolClient, tool_client_for

    for name, pem in make_tls(["sql-tools", "sql-tools-headless"]).items():
        (tmp_path / name).write_bytes(pem)
    server = ServerSettings(host="127.0.0.1", port=0, tls_cert=tmp_path / "server.pem",
                            tls_key=tmp_path / "server-key.pem", auth_token="t-tools")
    replicas = [await start_tools(server=server) for _ in range(2)]
    addresses = [r.address for r in replicas]

    async def resolve(host: str, port: int) -> list[str]:
        assert host == "sql-tools-headless"
        return addresses

    target = "routed:///sql-tools-headless:50051"
    dial = ClientSettings(tls_ca=tmp_path / "ca.pem", auth_tokens=("sql-tools-headless=t-tools",))
    assert dial.token_for(target) == "t-tools"
    async with RoutedToolClient(target, resolve=resolve, retry=NO_RETRY, auth_token=dial.token_for(target),
                                tls=dial.channel_tls()) as client:
        sessions = [await client.open_session({"db_id": "concert_singer"}) for _ in range(12)]
        assert {client.replica_of(sid) for sid in sessions} == set(addresses)     # both replicas hold some
        for sid in sessions:
            result = await client.call_tool("sql_query", {"query": "SELECT count(*) FROM singer"}, session_id=sid)
            assert not result.is_error and not result.system_error, result

    static = ",".join(addresses)
    # without a name to check, 127.0.0.1 is not in the certificate: no replica answers
    async with tool_client_for(static, retry=NO_RETRY, auth_token="t-tools", tls=dial.channel_tls()) as blind:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(blind.list_tools(timeout=3.0), 20)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    named = ClientSettings.from_env("RLYARD_CLIENT", {"RLYARD_CLIENT_TLS_CA": str(tmp_path / "ca.pem"),
                                                      "RLYARD_CLIENT_TLS_SERVER_NAME": "sql-tools",
                                                      "RLYARD_CLIENT_AUTH_TOKEN": "t-tools"})
    async with tool_client_for(static, retry=NO_RETRY, auth_token=named.token_for(static),
                               tls=named.channel_tls()) as client:
        assert "sql_query" in {t.name for t in await client.list_tools()}
        sessions = [await client.open_session({"db_id": "concert_singer"}) for _ in range(12)]
        assert {client.replica_of(sid) for sid in sessions} == set(addresses)


# --- settings -----------------------------------------------------------------------------


def test_client_settings_from_env_and_token_lookup(pki: Pki) -> None:
    env = {"RLYARD_CLIENT_TLS_CA": str(pki.tls("ca.pem")), "RLYARD_CLIENT_AUTH_TOKEN": "shared",
           "RLYARD_CLIENT_AUTH_TOKENS": "sql-tools=t1, 127.0.0.1:50052=t2"}
    s = ClientSettings.from_env("RLYARD_CLIENT", env)
    assert s.channel_tls() == ClientTLS(pki.tls("ca.pem"))
    assert s.token_for("sql-tools:50051") == "t1"          # by host
    assert s.token_for("127.0.0.1:50052") == "t2"          # by whole address
    assert s.token_for("127.0.0.1:50051") == "shared"      # fallback
    assert ClientSettings().channel_tls() is None and ClientSettings().token_for("x:1") is None
    assert ClientSettings(tls=True).channel_tls() == ClientTLS()      # the system's roots
    assert [target_host(t) for t in ("a:1", "[::1]:5", "a", "10.0.0.1:80", "routed:///a-headless:1")] == \
        ["a", "::1", "a", "10.0.0.1", "a-headless"]
    with pytest.raises(ConfigError, match="name=token"):
        ClientSettings(auth_tokens=("sql-tools",))
    with pytest.raises(ConfigError, match="both"):
        ClientSettings(tls_ca=pki.tls("ca.pem"), tls_cert=pki.tls("client.pem"))
    with pytest.raises(ConfigError, match="TLS is off"):
        ClientSettings(tls_cert=pki.tls("client.pem"), tls_key=pki.tls("client-key.pem"))


def test_server_settings_refuse_half_a_tls_config(pki: Pki, tmp_path: Path) -> None:
    s = ServerSettings.from_env("RLYARD", {"RLYARD_TLS_CERT": "/c.pem", "RLYARD_TLS_KEY": "/k.pem",
                                           "RLYARD_TLS_CLIENT_CA": "/ca.pem", "RLYARD_TLS_REQUIRE_CLIENT_CERT": "1"})
    assert (s.tls, s.tls_cert, s.tls_require_client_cert) == (True, Path("/c.pem"), True)
    with pytest.raises(ConfigError, match="RLYARD_TLS_KEY"):
        ServerSettings(tls_cert=Path("/c.pem"))
    with pytest.raises(ConfigError, match="RLYARD_TLS_CLIENT_CA"):
        ServerSettings(tls_cert=Path("/c.pem"), tls_key=Path("/k.pem"), tls_require_client_cert=True)
    with pytest.raises(ConfigError, match="RLYARD_TLS_CERT"):
        ServerSettings(tls_client_ca=Path("/ca.pem"))


async def test_a_missing_certificate_file_fails_start_up_with_its_name(pki: Pki, start_tools: StartTools,
                                                                       tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"RLYARD_TLS_KEY: cannot read .*nope\.pem"):
        await start_tools(server=pki.server().replaced({"tls_key": str(tmp_path / "nope.pem")}, "test"))


# --- rlyard certs ---------------------------------------------------------------------------


def test_certs_writes_keys_private_tokens_per_service_and_refuses_to_overwrite(tmp_path: Path) -> None:
    table = load_table(DEFAULT_TABLE)
    out = tmp_path / "secrets"
    written = write_certs(table, out)
    paths = {w.path.relative_to(out).as_posix() for w in written}
    assert {"tls/ca.pem", "tls/server.pem", "tls/server-key.pem", "tls/client.pem", "client.env",
            "k8s-secrets.yaml", *(f"tokens/{s.name}.env" for s in table.services)} <= paths
    for w in written:
        mode = stat.S_IMODE(os.stat(w.path).st_mode)
        assert mode == (0o644 if w.path.name in ("ca.pem", "server.pem", "client.pem") else 0o600), w.path

    def env(name: str) -> dict[str, str]:
        lines = (out / "tokens" / f"{name}.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))

    own = {s.name: env(s.name)["RLYARD_AUTH_TOKEN"] for s in table.services}
    assert len(set(own.values())) == len(own)                       # a token per service
    reward = ClientSettings(auth_tokens=tuple(env("reward")["RLYARD_CLIENT_AUTH_TOKENS"].split(",")))
    assert reward.token_for("sql-tools:50051") == own["sql-tools"]   # what it depends on
    assert reward.token_for("search:50055") == own["search"]         # what it wants
    assert reward.token_for("memory:50053") is None                  # not what it calls
    # a tool service's routed target in Kubernetes: found by its headless name
    assert reward.token_for("routed:///sql-tools-headless:50051") == own["sql-tools"]
    trainer = ClientSettings(auth_tokens=tuple(env("trainer")["RLYARD_CLIENT_AUTH_TOKENS"].split(",")))
    assert {trainer.token_for(f"{s.name}:1") for s in table.services if s.name != "trainer"} == \
        {v for k, v in own.items() if k != "trainer"}
    secrets = list(yaml.safe_load_all((out / "k8s-secrets.yaml").read_text()))
    # a worker takes jobs naming any service: every service's token, the trainer's for the others
    worker = ClientSettings(auth_tokens=tuple(env("worker")["RLYARD_CLIENT_AUTH_TOKENS"].split(",")))
    assert {s.name: worker.token_for(f"{s.name}:1") for s in table.services} == own
    assert "RLYARD_AUTH_TOKEN" not in env("worker")                  # it serves nothing
    assert {d["metadata"]["name"] for d in secrets} == {"rlyard-tls", *(f"{s.name}-tokens" for s in table.services),
                                                        *(f"{w.name}-tokens" for w in table.workers),
                                                        "postgres-credentials", "redis-credentials"}
    assert "ca-key.pem" not in str(secrets) and "ca.key" not in secrets[0]["data"]

    before = (out / "tls" / "ca.pem").read_bytes()
    with pytest.raises(ConfigError, match="--force"):
        write_certs(table, out)
    assert (out / "tls" / "ca.pem").read_bytes() == before            # nothing was written
    write_certs(table, out, force=True)
    assert (out / "tls" / "ca.pem").read_bytes() != before



def test_certs_writes_random_store_passwords_private_and_refuses_to_overwrite(tmp_path: Path) -> None:
    """A random PostgreSQL and Redis password, mode 0600, in the stores' secret files and in the URLs
    of the memory's, the workers' and the trainer's token files and Secrets; kept without --force."""
    table = load_table(DEFAULT_TABLE)
    out = tmp_path / "secrets"
    paths = {w.path.relative_to(out).as_posix(): w.path for w in write_certs(table, out)}
    backing = {name: paths[f"backing/{name}"] for name in ("postgres-password", "redis.conf", "redis.env")}
    for path in backing.values():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path

    def env(path: Path) -> dict[str, str]:
        return dict(ln.split("=", 1) for ln in path.read_text().splitlines() if ln and not ln.startswith("#"))

    pg = backing["postgres-password"].read_text()
    rd = env(backing["redis.env"])["REDISCLI_AUTH"]
    assert backing["redis.conf"].read_text() == f"requirepass {rd}\n"
    [postgres] = [b for b in table.backing if b.name == "postgres"]
    assert len({pg, rd, postgres.env["POSTGRES_PASSWORD"]}) == 3 and min(len(pg), len(rd)) >= 40
    assert env(out / "tokens" / "memory.env")["RLYARD_MEMORY_DB_URL"] == \
        f"postgresql+psycopg://rlyard:{pg}@postgres:5432/memory"
    for name in ("worker", "trainer"):
        assert env(out / "tokens" / f"{name}.env")["RLYARD_WORKERS_BROKER_URL"] == f"redis://:{rd}@redis:6379/0"
    for name in ("sql-tools", "reward", "sampler"):       # no store URL for what uses none
        assert not {"RLYARD_MEMORY_DB_URL", "RLYARD_WORKERS_BROKER_URL"} & set(env(out / "tokens" / f"{name}.env"))
    secrets = {d["metadata"]["name"]: d for d in yaml.safe_load_all((out / "k8s-secrets.yaml").read_text())}
    assert secrets["postgres-credentials"]["stringData"] == {"postgres-password": pg}
    assert secrets["redis-credentials"]["stringData"]["REDISCLI_AUTH"] == rd

    with pytest.raises(ConfigError, match="--force"):
        write_certs(table, out)
    assert backing["postgres-password"].read_text() == pg            # nothing was written
    write_certs(table, out, force=True)
    assert backing["postgres-password"].read_text() != pg
    assert env(backing["redis.env"])["REDISCLI_AUTH"] != rd
    assert stat.S_IMODE(os.stat(backing["postgres-password"]).st_mode) == 0o600

def test_launcher_tls_needs_the_files(pki: Pki, tmp_path: Path) -> None:
    env, health = launcher_tls(pki.out)
    assert env["RLYARD_TLS_REQUIRE_CLIENT_CERT"] == "true" and health.cert_file == pki.tls("client.pem").resolve()
    ServerSettings.from_env("RLYARD", env)       # a valid server configuration
    with pytest.raises(ConfigError, match="rlyard certs"):
        launcher_tls(tmp_path)


async def test_rlyard_up_with_tls_and_a_shared_token(pki: Pki, tmp_path: Path) -> None:
    """`rlyard up --tls DIR`: the SQL tools and the reward service as processes serving mutual TLS;
    the reward service reaches the tools over TLS with the token from its environment."""
    from rlyard_app.launcher import Launcher

    table = load_table(DEFAULT_TABLE)
    env, health_tls = launcher_tls(pki.out)
    env |= {"RLYARD_AUTH_TOKEN": "up-token", "RLYARD_CLIENT_AUTH_TOKEN": "up-token"}
    launcher = Launcher([table.get("sql-tools"), table.get("reward")], tmp_path / "logs", ephemeral_ports=True,
                        extra_env=env, health_tls=health_tls, start_timeout_s=60)
    with launcher:
        endpoints = await asyncio.to_thread(launcher.start)
        reward = endpoints["reward"].target
        assert await asyncio.to_thread(check_health, reward, 2.0) == "UNREACHABLE"      # plaintext
        item = ScoringItem(item_id="i", prediction="SELECT Name, Age FROM singer", ground_truth=GT)
        async with RewardClient(reward, timeout=30.0, retry=NO_RETRY, auth_token="up-token",
                                tls=pki.client()) as rc:
            result = await rc.score(item, load_spec(json.dumps({"sql_execution": 1.0})))
        assert (result.status, result.total) == (ScoreStatus.OK, 1.0), result.error
        async with RewardClient(reward, timeout=30.0, retry=NO_RETRY, tls=pki.client()) as anonymous:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await anonymous.score(item, load_spec(json.dumps({"sql_execution": 1.0})))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_run_dials_a_given_tool_server_with_tls_and_its_token(pki: Pki, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The composition root: the trainer's tool client and the reward service it embeds both reach a
    tool server given by address over mutual TLS with that server's token, from RLYARD_CLIENT_*;
    the embedded reward service itself stays plaintext on loopback."""
    from rlyard_app.launcher import Launcher
    from trainer import compose
    from trainer.config import parse_config

    env, health_tls = launcher_tls(pki.out)
    tools = load_table(DEFAULT_TABLE).get("sql-tools")
    with Launcher([tools], tmp_path / "logs", ephemeral_ports=True, extra_env=env | {"RLYARD_AUTH_TOKEN": "t-sql"},
                  health_tls=health_tls) as launcher:
        port = launcher.start()["sql-tools"].port
        for key in ("RLYARD_CLIENT_TLS_CA", "RLYARD_CLIENT_TLS_CERT", "RLYARD_CLIENT_TLS_KEY"):
            monkeypatch.setenv(key, env[key])
        monkeypatch.setenv("RLYARD_CLIENT_AUTH_TOKENS", "localhost=t-sql")
        config = parse_config({"name": "tls", "services": {"tools": f"localhost:{port}", "timeout_s": 10},
                               "stages": [{"kind": "sft", "data": "demos.jsonl", "steps": 1}]})
        with compose.open_stack(config) as stack:
            assert "sql_query" in {t["function"]["name"] for t in stack.tools}      # ListTools over TLS
            item = ScoringItem(item_id="i", prediction="SELECT Name, Age FROM singer", ground_truth=GT)
            result = stack.run(stack.reward_client.score(item, load_spec(json.dumps({"sql_execution": 1.0}))))
            assert (result.status, result.total) == (ScoreStatus.OK, 1.0), result.error
            assert check_health(stack.services.reward) == "SERVING"                   # plaintext, embedded
        monkeypatch.setenv("RLYARD_CLIENT_AUTH_TOKENS", "localhost=wrong")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            with compose.open_stack(config):
                pass
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_run_dials_the_sampler_service_with_tls_and_its_token(
        pki: Pki, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``model.backend: remote``: the run's sampler dials the sampler service over mutual TLS with
    the sampler's token from RLYARD_CLIENT_* (the embedded tools stay plaintext on loopback)."""
    from trainer import compose
    from trainer.config import parse_config
    from trainer.policy.hf import HFPolicy
    from trainer.rollout import EngineThread
    from trainer.sampler.remote import RemoteSampler
    from trainer.sampler.service import sampler_service
    from trainer.sampler.serving import SamplerHost
    from trainer.sampler.settings import SamplerSettings

    with EngineThread(name="sampler-service") as thread:
        async def up() -> RunningServer:
            host = SamplerHost(HFPolicy(tiny_model_dir), model_name="tiny")
            return await start_server(sampler_service(SamplerSettings(), host=host), pki.mutual(auth_token="t-smp"))

        sampler_server = thread.run(up(), timeout=60)
        try:
            for key, name in (("TLS_CA", "ca.pem"), ("TLS_CERT", "client.pem"), ("TLS_KEY", "client-key.pem")):
                monkeypatch.setenv(f"RLYARD_CLIENT_{key}", str(pki.tls(name)))
            config = parse_config({"name": "tls", "services": {"timeout_s": 10},
                                   "model": {"path": str(tiny_model_dir), "backend": "remote",
                                             "sampler": sampler_server.address, "weights_dir": str(tmp_path / "w")},
                                   "stages": [{"kind": "sft", "data": "demos.jsonl", "steps": 1}]})
            for tokens, answers in (("127.0.0.1=t-smp", True), ("127.0.0.1=wrong", False)):
                monkeypatch.setenv("RLYARD_CLIENT_AUTH_TOKENS", tokens)
                with compose.open_stack(config) as stack:
                    sampler = stack.sampler(HFPolicy(tiny_model_dir))
                    assert isinstance(sampler, RemoteSampler)

                    async def info(remote: RemoteSampler = sampler) -> str:
                        return (await remote.client.info()).model    # the channel is made on the stack's loop

                    if answers:
                        assert stack.run(info()) == "tiny"
                    else:
                        with pytest.raises(Unauthenticated):
                            stack.run(info())
        finally:
            thread.run(sampler_server.stop(0), timeout=30)


def test_rlyard_certs_command_lists_what_it_wrote_and_refuses_to_overwrite(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from rlyard_app.cli import main as cli
    from rlyard_app.cli.main import main

    monkeypatch.setattr(cli.console, "width", 400)       # one line per file: no wrapped paths
    monkeypatch.setattr(cli.err_console, "width", 400)
    out = tmp_path / "s"
    assert main(["--table", str(DEFAULT_TABLE), "certs", "--out", str(out), "--days", "30"]) == 0
    printed = capsys.readouterr().out
    written = sorted(p for p in out.rglob("*") if p.is_file())
    # 6 PEMs, client.env, k8s-secrets.yaml, a token file a service and a worker entry, and the stores'
    # password files (postgres-password; redis.conf and redis.env)
    table = load_table(DEFAULT_TABLE)
    assert len(written) == 8 + len(table.services) + len(table.workers) + 3
    assert "postgres-password" in printed and "redis.conf" in printed
    assert f"wrote {len(written)} files" in printed and "client.env" in printed and "k8s-secrets.yaml" in printed
    # what Compose's bind-mounted secrets need: each private file given to the user that reads it
    assert f"chown 10001 {out / 'tls' / 'server-key.pem'} {out / 'tls' / 'client-key.pem'}" in printed
    assert f"chown 70 {out / 'backing' / 'postgres-password'}" in printed
    assert f"chown 999 {out / 'backing' / 'redis.conf'}" in printed
    assert (out / "tls" / "server.pem").is_file()
    assert main(["--table", str(DEFAULT_TABLE), "certs", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["--table", str(DEFAULT_TABLE), "certs", "--out", str(out), "--force"]) == 0
