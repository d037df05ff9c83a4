"""`docker compose up` of the profile `vision` for real: the table's `image-tools` in its own image
(`rlyard-image`, extras `image`: OpenCV headless and numpy, no torch), built offline
(scripts/docker/build.sh image), started from the generated docker-compose.yml on free loopback
ports. Over gRPC a session opened with a PNG is cropped (the region pixel for pixel, as
tests/e2e/test_image_tools_service.py checks against `rlyard up`), the crop is counted on
/metrics, and `docker compose stop` ends the container with exit code 0.

`make compose-e2e` runs it; docs/deployment.md ("The image tools") has a run's numbers and the
image's size.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator

import pytest
from compose_support import Compose, build_images, exit_code, require_docker
from image_support import crop_and_revisit, tool_calls

from rlyard_app.launcher import check_health
from rlyard_app.services import DEFAULT_TABLE, load_table

pytestmark = pytest.mark.slow  # a minute: the image build (cached: seconds), start-up, a few calls

SERVICE = "image-tools"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Compose, dict[str, float]]]:
    require_docker(needs_base_image=True)
    table = load_table(DEFAULT_TABLE)
    compose = Compose.publishing(table, [SERVICE], tmp_path_factory.mktemp("compose"), "rlyard-vision", ["vision"])
    timings = {"build_s": build_images(table.get(SERVICE).image)}
    try:
        tic = time.monotonic()
        compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "120", SERVICE, timeout=300)
        timings["up_s"] = time.monotonic() - tic
        yield compose, timings
    finally:
        logs = compose("logs", "--no-color", check=False).stdout
        (tmp_path_factory.getbasetemp() / "compose-vision.log").write_text(logs)
        compose("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)


def test_the_image_has_opencv_and_no_torch() -> None:
    spec = load_table(DEFAULT_TABLE).get(SERVICE)
    ref = load_table(DEFAULT_TABLE).image_of(spec)
    if subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode != 0:
        pytest.skip(f"{ref} is not built (the compose test below builds it)")
    probe = ("import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None for m in "
             "('cv2', 'numpy', 'grpc', 'torch', 'transformers', 'sqlalchemy')}))")
    found = json.loads(subprocess.run(["docker", "run", "--rm", ref, "python", "-c", probe], capture_output=True,
                                      text=True, check=True, timeout=120).stdout)
    assert found == {"cv2": True, "numpy": True, "grpc": True, "torch": False, "transformers": False,
                     "sqlalchemy": False}
    size = int(subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", ref], capture_output=True, text=True,
                              check=True).stdout)
    print(f"{ref}: {size / 1e6:.0f} MB")
    assert size < 700e6      # 479 MB here; torch alone would add ~700 MB


def test_vision_profile_serves_the_image_tools_under_compose(stack: tuple[Compose, dict[str, float]]) -> None:
    compose, timings = stack
    spec = load_table(DEFAULT_TABLE).get(SERVICE)
    port, metrics_port = compose.port(SERVICE, spec.port), compose.port(SERVICE, spec.metrics_port)
    target = f"127.0.0.1:{port}"
    assert check_health(target, service="rlyard.tools.v1.ToolService") == "SERVING"
    [status] = [json.loads(line) for line in compose("ps", "--format", "json", SERVICE).stdout.splitlines() if line]
    assert status["Health"] == "healthy"
    tic = time.monotonic()
    asyncio.run(crop_and_revisit(target))
    timings["calls_s"] = time.monotonic() - tic
    calls = tool_calls(metrics_port)      # the container's /metrics, on its published port
    assert calls[("crop", "ok")] == 1 and calls[("revisit", "ok")] == 1, calls

    tic = time.monotonic()
    compose("stop", "--timeout", "20")
    timings["stop_s"] = time.monotonic() - tic
    assert exit_code(compose("ps", "-a", "-q", SERVICE).stdout.strip()) == "0"
    print("compose vision e2e timings (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}))
