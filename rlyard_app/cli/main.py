"""The ``rlyard`` command line.

    rlyard up [--profile sql]          start a profile's services locally, until Ctrl-C
    rlyard status                      health of every service
    rlyard tool list                   the tools a tool server offers
    rlyard tool call NAME JSON --db ID call one tool
    rlyard serve KIND                  run one service in the foreground (used by up/compose/k8s)
    rlyard worker [--concurrency N]    a Celery rollout worker on the Redis broker (RLYARD_WORKERS_*)
    rlyard reward score --spec S --input I --output O   score a JSONL file (embedded services by default)
    rlyard train -c CONFIG             run an experiment (SFT, RL stages) with a live progress view
    rlyard eval -c CONFIG --checkpoint DIR [--spider-dev N]   evaluate a policy (accuracy, tool calls, errors)
    rlyard model init --out DIR        build the tiny policy (tokenizer trained here, Qwen2/Llama from a config;
                                       --vision: a Qwen2-VL)
    rlyard deploy render [--check]     regenerate docker-compose.yml and k8s/ from the service table
    rlyard certs [--out secrets]       a local CA, TLS certificates and per-service tokens (docs/deployment.md)
    rlyard deploy images [--backing]   the images to build: reference and extras (or Dockerfile), one a line
    rlyard demo                        the learning demo: services embedded, SFT + GRPO, held-out accuracy, a report
    rlyard tour                        services up, a scripted session of real calls and rewards, a report
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rlyard.errors import ConfigError
from rlyard_app.services import DEFAULT_TABLE, ROOT, load_table

console = Console()
err_console = Console(stderr=True)


def _cmd_serve(ns: argparse.Namespace) -> int:
    from rlyard_app.cli.serve import run_service
    from rlyard_app.launcher import die_with_parent

    die_with_parent()
    run_service(ns.kind)
    return 0


def _cmd_up(ns: argparse.Namespace) -> int:
    from rlyard_app.launcher import Endpoint, Launcher, write_state

    table = load_table(ns.table)
    specs = table.profile(ns.profile)
    run_dir = Path(ns.log_dir)
    console.print(f"[bold]rlyard up[/]: starting {len(specs)} service(s) of profile [cyan]{ns.profile}[/]")

    def ready(e: Endpoint) -> None:
        console.print(f"  [green]✓[/] {e.name:<16} grpc {e.target}   metrics :{e.metrics_port}   log {e.log_file}")

    extra_env: dict[str, str] = {}
    health_tls = None
    if ns.tls:
        from rlyard_app.certs import launcher_tls

        extra_env, health_tls = launcher_tls(Path(ns.tls))
        console.print(f"  mutual TLS with the certificates of {ns.tls} (`rlyard certs`)")
    launcher = Launcher(specs, run_dir, ephemeral_ports=ns.ephemeral_ports, extra_env=extra_env,
                        health_tls=health_tls)
    import signal

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        with launcher:
            endpoints = launcher.start(on_ready=ready)
            write_state(endpoints)
            console.print("all services SERVING; Ctrl-C stops them all")
            name, code = launcher.wait()
            err_console.print(f"[red]{name} exited with code {code}; stopping the others[/]")
            return 1
    except KeyboardInterrupt:
        console.print("stopping…")
        return 0


def _targets(ns: argparse.Namespace, kind: str | None = None) -> dict[str, str]:
    """Service name -> target: --target, else a running `rlyard up`, else the table's ports."""
    from rlyard_app.launcher import read_state

    if getattr(ns, "target", None):
        return {"target": ns.target}
    state = read_state()
    if state:
        return {n: str(s["target"]) for n, s in state.items() if kind is None or s["kind"] == kind}
    table = load_table(ns.table)
    return {s.name: f"127.0.0.1:{s.port}" for s in table.services if kind is None or s.kind == kind}


def _cmd_status(ns: argparse.Namespace) -> int:
    from rlyard.tls import ClientSettings
    from rlyard_app.launcher import check_health

    targets = _targets(ns)
    out = Table("service", "target", "health")
    ok = True
    tls = ClientSettings.from_env("RLYARD_CLIENT").channel_tls()
    for name, target in targets.items():
        status = check_health(target, timeout=ns.timeout, tls=tls)
        ok &= status == "SERVING"
        colour = "green" if status == "SERVING" else "red"
        out.add_row(name, target, f"[{colour}]{status}[/]")
    console.print(out)
    return 0 if ok else 1


def _tool_target(ns: argparse.Namespace) -> str:
    targets = _targets(ns, kind="tools")
    if not targets:
        raise ConfigError("no tool server known; pass --target HOST:PORT or run `rlyard up`")
    return next(iter(targets.values()))


def _security(target: str) -> dict[str, Any]:
    """TLS and the token for a client of ``target``, from ``RLYARD_CLIENT_*`` (rlyard/tls.py)."""
    from rlyard.tls import ClientSettings

    client = ClientSettings.from_env("RLYARD_CLIENT")
    return {"auth_token": client.token_for(target), "tls": client.channel_tls()}


async def _tool_list(target: str, timeout: float) -> int:
    from rlyard.routing import tool_client_for

    async with tool_client_for(target, timeout=timeout, **_security(target)) as client:
        tools = await client.list_tools()
    out = Table("tool", "description", "arguments (JSON Schema properties)")
    for t in tools:
        props = json.loads(t.parameters_json_schema).get("properties", {})
        out.add_row(t.name, t.description, ", ".join(props) or "(none)")
    console.print(out)
    return 0


async def _tool_call(target: str, name: str, args: str, db: str | None, timeout: float, as_json: bool) -> int:
    from google.protobuf import json_format

    from rlyard.domain.convert import tool_result_to_pb
    from rlyard.routing import tool_client_for

    context = {"db_id": db} if db else {}
    async with tool_client_for(target, timeout=timeout, **_security(target)) as client:
        result = await client.call_tool(name, args, context=context)
    if as_json:
        console.print_json(json_format.MessageToJson(tool_result_to_pb(result)))
    else:
        console.print(result.observation, markup=False, highlight=False)
        style = "red" if result.is_error else "dim"
        console.print(f"[{style}]{'error' if result.is_error else 'ok'} · {result.latency_ms:.2f} ms[/]")
    return 1 if result.is_error else 0


def _cmd_tool(ns: argparse.Namespace) -> int:
    target = _tool_target(ns)
    if ns.tool_cmd == "list":
        return asyncio.run(_tool_list(target, ns.timeout))
    return asyncio.run(_tool_call(target, ns.name, ns.arguments, ns.db, ns.timeout, ns.json))


def _cmd_deploy(ns: argparse.Namespace) -> int:
    from rlyard_app import deploy

    table = load_table(ns.table)
    if ns.deploy_cmd == "images":
        if ns.backing:
            # one line per backing store built offline: its image, the Dockerfile, the store's name
            for store in table.backing:
                if store.offline_dockerfile:
                    print(store.offline_image, store.offline_dockerfile, store.name)
            return 0
        # one line per image: its reference and the extras it installs (scripts/docker/build.sh)
        for name, extras in table.images.items():
            print(table.image_ref(name), ",".join(extras))
        return 0
    if ns.check:
        stale = deploy.check_all(table, ROOT)
        if stale:
            err_console.print(f"[red]out of date:[/] {', '.join(stale)}; run `rlyard deploy render`")
            return 1
        console.print("deployment files match the service table")
        return 0
    for path in deploy.write_all(table, ROOT):
        console.print(f"wrote {path}")
    return 0


def _cmd_certs(ns: argparse.Namespace) -> int:
    from rlyard_app.certs import write_certs
    from rlyard_app.deploy import secret_readers

    table = load_table(ns.table)
    out = Path(ns.out)
    written = write_certs(table, out, days=ns.days, force=ns.force)
    listing = Table("file", "what", title=f"rlyard certs: wrote {len(written)} files under {out}")
    for w in written:
        listing.add_row(str(w.path), w.what)
    console.print(listing)
    console.print(f"keys and token files are mode 0600; the certificates are valid for {ns.days} days.\n"
                  f"on this host:  set -a; . {out / 'client.env'}; set +a\n"
                  f"Kubernetes:    kubectl apply -f {out / 'k8s-secrets.yaml'}\n"
                  "Compose and Kubernetes use them once the table's tls.enabled is true "
                  "(`rlyard deploy render`); see docs/deployment.md")
    # Compose bind-mounts file secrets as they are: the containers' users cannot read a 0600 file of root's
    by_user: dict[int, list[str]] = {}
    for name, uid in secret_readers(table).items():
        by_user.setdefault(uid, []).append(str(out / name))
    console.print("Compose:       " + "; ".join(f"chown {uid} {' '.join(paths)}" for uid, paths in by_user.items())
                  + "  (or chmod 0644 them)", soft_wrap=True)
    return 0


def _cmd_reward(ns: argparse.Namespace) -> int:
    from rlyard_app.cli import reward

    return reward.run(ns, console)


def _cmd_train(ns: argparse.Namespace) -> int:
    from rlyard_app.cli import train

    return train.run(ns, console)


def _cmd_eval(ns: argparse.Namespace) -> int:
    from rlyard_app.cli import evaluate

    return evaluate.run(ns, console)


def _cmd_model(ns: argparse.Namespace) -> int:
    from trainer.model import init_policy

    info = init_policy(Path(ns.out), arch=ns.arch, size=ns.size, vocab_size=ns.vocab_size, seed=ns.seed,
                       corpus=Path(ns.corpus) if ns.corpus else None, vision=ns.vision)
    console.print(f"wrote a {info.arch} policy of {info.n_params:,} parameters (vocab {info.vocab_size}) "
                  f"to {info.out_dir}")
    return 0


def _cmd_tour(ns: argparse.Namespace) -> int:
    from rlyard_app.tour import run_demo

    return run_demo(Path(ns.output_dir), console)


def _cmd_demo(ns: argparse.Namespace) -> int:
    from rlyard_app.cli import demo

    return demo.run(ns, console)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="rlyard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE, help="the service table (YAML)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run one service in the foreground, configured from the environment")
    p.add_argument("kind", help="service kind, e.g. tools")
    p.set_defaults(fn=_cmd_serve)

    from rlyard_app.cli import worker

    worker.add_parser(sub)

    p = sub.add_parser("up", help="start a profile's services as local processes")
    p.add_argument("--profile", default="all")
    p.add_argument("--ephemeral-ports", action="store_true", help="bind free ports instead of the table's")
    p.add_argument("--log-dir", default=".rlyard/logs")
    p.add_argument("--tls", metavar="DIR", help="serve mutual TLS with the certificates `rlyard certs --out DIR` made")
    p.set_defaults(fn=_cmd_up)

    p = sub.add_parser("status", help="health of every service")
    p.add_argument("--target", help="check one HOST:PORT instead")
    p.add_argument("--timeout", type=float, default=2.0)
    p.set_defaults(fn=_cmd_status)

    p = sub.add_parser("tool", help="talk to a tool server")
    p.add_argument("--target", help="HOST:PORT of the tool server (default: from `rlyard up`)")
    p.add_argument("--timeout", type=float, default=10.0)
    tsub = p.add_subparsers(dest="tool_cmd", required=True)
    ls = tsub.add_parser("list", help="the tools and their arguments")
    c = tsub.add_parser("call", help="call one tool")
    for q in (ls, c):  # also accepted after the subcommand
        q.add_argument("--target", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        q.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    c.add_argument("name")
    c.add_argument("arguments", nargs="?", default="{}", help="JSON object of arguments")
    c.add_argument("--db", help="db_id of the database (SQL tools)")
    c.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.set_defaults(fn=_cmd_tool)

    p = sub.add_parser("deploy", help="deployment files")
    dsub = p.add_subparsers(dest="deploy_cmd", required=True)
    r = dsub.add_parser("render", help="regenerate docker-compose.yml and k8s/ from the service table")
    r.add_argument("--check", action="store_true", help="fail if the committed files are out of date")
    i = dsub.add_parser("images", help="the images of the service table: reference and extras, one a line")
    i.add_argument("--backing", action="store_true",
                   help="instead, the backing stores' offline images: reference, Dockerfile and store, one a line")
    p.set_defaults(fn=_cmd_deploy)

    p = sub.add_parser("certs", help="make a local CA, TLS certificates and per-service tokens")
    p.add_argument("--out", default="secrets", help="directory to write (default: secrets/, ignored by git)")
    p.add_argument("--days", type=int, default=365, help="validity of the certificates")
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.set_defaults(fn=_cmd_certs)

    p = sub.add_parser("reward", help="score predictions or trajectories")
    rsub = p.add_subparsers(dest="reward_cmd", required=True)
    r = rsub.add_parser("score", help="score a JSONL file with a reward spec")
    r.add_argument("--spec", required=True, help='JSON/YAML or a file, e.g. \'{"sql_execution": 1.0}\'')
    r.add_argument("--input", required=True, help="JSONL: id, prediction or trajectory, ground_truth")
    r.add_argument("--output", required=True, help="JSONL: id, total, components, status, error")
    r.add_argument("--target", help="HOST:PORT of a reward service (default: start one embedded)")
    r.add_argument("--sql-db-dir", default=str(ROOT / "data" / "spider" / "database"),
                   help="SQLite databases for the embedded SQL tool server")
    r.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(fn=_cmd_reward)

    p = sub.add_parser("train", help="run an experiment (SFT and RL stages) with a live progress view")
    p.add_argument("-c", "--config", required=True, help="experiment YAML (see configs/)")
    p.add_argument("--run-id", help="name of runs/<run_id> (default: <name>-<time>)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start over even if the run directory has checkpoints")
    p.set_defaults(fn=_cmd_train)

    p = sub.add_parser("eval", help="run a policy on a task set: execution accuracy, tool calls, errors")
    from rlyard_app.cli.evaluate import add_arguments as add_eval_arguments

    add_eval_arguments(p)
    p.set_defaults(fn=_cmd_eval)

    p = sub.add_parser("model", help="policy checkpoints")
    msub = p.add_subparsers(dest="model_cmd", required=True)
    m = msub.add_parser("init", help="build the tiny policy (BPE tokenizer trained here, Qwen2/Llama from a config)")
    m.add_argument("--out", required=True, help="checkpoint directory to write")
    m.add_argument("--arch", choices=["qwen2", "llama"], default="qwen2")
    m.add_argument("--size", choices=["tiny", "small"], default="tiny", help="tiny ≈ 1.4M, small ≈ 4.7M parameters")
    m.add_argument("--vocab-size", type=int, default=2048)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--corpus", help="text file or folder of .txt for the tokenizer (default: data/corpus)")
    m.add_argument("--vision", action="store_true",
                   help="a Qwen2-VL instead (the size's decoder + a 2-layer vision tower, ≈1.7M params for tiny; "
                        "vision tokens added to the tokenizer; Qwen2-VL's image processor)")
    p.set_defaults(fn=_cmd_model)

    p = sub.add_parser("demo", help="the learning demo: a tiny policy learns text-to-SQL (SFT, then GRPO), "
                                    "held-out accuracy before and after RL, a report")
    p.add_argument("--output-dir", default="runs")
    p.add_argument("--run-id", default="", help="name of the run directory (an existing one resumes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rl-seconds", type=float, help="GRPO's time limit (default: experiments.learning.LearningConfig)")
    p.add_argument("--budget-minutes", type=float, default=14.0,
                   help="the whole run's time budget: GRPO gets at most what is left of it after preparation "
                        "and SFT, less a minute for the evaluations (default 14; 0 = none, GRPO gets --rl-seconds)")
    p.add_argument("--sft-steps", type=int, help="SFT steps on the demonstrations")
    p.add_argument("--copy-steps", type=int, help="copying warm-up steps of the fresh policy")
    p.add_argument("--quick", action="store_true", help="a smoke-sized run (about a minute; learns nothing)")
    p.set_defaults(fn=_cmd_demo)

    p = sub.add_parser("tour", help="start the services, run a scripted session of tool calls and rewards, "
                                    "write a report")
    p.add_argument("--output-dir", default="runs")
    p.set_defaults(fn=_cmd_tour)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rlyard`` console script."""
    ns = build_parser().parse_args(argv)
    if ns.command not in ("serve", "worker"):
        logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
    try:
        code: int = ns.fn(ns)
        return code
    except ConfigError as exc:
        err_console.print(f"[red]configuration error:[/] {exc}")
        return 2
    except RuntimeError as exc:
        from rlyard_app.launcher import ServiceStartError

        if isinstance(exc, ServiceStartError):
            err_console.print("a service failed to start: " + str(exc), style="red", markup=False)
            return 1
        raise
    except Exception as exc:
        import grpc

        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            err_console.print(f"[red]{exc.code().name}[/]: {exc.details()}")
            return 3
        raise


if __name__ == "__main__":
    sys.exit(main())
