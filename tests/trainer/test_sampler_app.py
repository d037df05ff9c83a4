"""``rlyard serve sampler``: the service built from ``RLYARD_SAMPLER_*`` in its own process (health,
a generation, a published version picked up, a clean stop), and its settings' refusals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlyard.errors import ConfigError
from rlyard_app.cli.serve import FACTORIES
from trainer.policy import HFPolicy, SamplingParams
from trainer.sampler import SampleRequest
from trainer.sampler.remote import RemoteSampler
from trainer.sampler.settings import SamplerSettings

ROOT = Path(__file__).resolve().parents[2]


def serve_sampler(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    ready = tmp_path / "ready.json"
    full = {**os.environ, "RLYARD_HOST": "127.0.0.1", "RLYARD_PORT": "0", "RLYARD_READY_FILE": str(ready),
            "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    server = subprocess.Popen([sys.executable, "-c", "from rlyard_app.cli.serve import run_service; "
                               "run_service('sampler')"], cwd=ROOT, env=full, stderr=subprocess.PIPE)
    return server, ready


def test_rlyard_serve_sampler_serves_and_loads_published_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    assert "sampler" in FACTORIES
    root = tmp_path / "weights"
    server, ready = serve_sampler(tmp_path, RLYARD_SAMPLER_POLICY_DIR=str(tiny_model_dir),
                                  RLYARD_SAMPLER_WEIGHTS_ROOT=str(root), RLYARD_SAMPLER_POLL_S="0.1")
    policy = HFPolicy(tiny_model_dir)
    ids = policy.tokenizer.encode("how many singer", add_special_tokens=False)
    greedy = SamplingParams(max_new_tokens=5, temperature=0.0)

    async def use(port: int) -> tuple[str, list[int], int, int]:
        # UNAVAILABLE while it loads the checkpoint: the retry window waits for it
        remote = RemoteSampler(f"127.0.0.1:{port}", weights_root=root, retry_window_s=60)
        try:
            gen = await remote.sample(SampleRequest(ids, greedy))
            await remote.sync_weights(policy.model, 4)
            after = await remote.sample(SampleRequest(ids, greedy))
            return await remote.client.health(), gen.token_ids, gen.weight_version, after.weight_version
        finally:
            await remote.aclose()

    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "the service did not start listening"
            time.sleep(0.05)
        health, tokens, first, after = asyncio.run(use(json.loads(ready.read_text())["port"]))
        assert (health, tokens, first, after) == ("SERVING", policy.generate([ids], greedy)[0].token_ids, 0, 4)
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0


def test_a_backend_that_is_not_available_stops_the_service_with_why(tmp_path: Path, tiny_model_dir: Path) -> None:
    server, _ = serve_sampler(tmp_path, RLYARD_SAMPLER_POLICY_DIR=str(tiny_model_dir), RLYARD_SAMPLER_BACKEND="vllm")
    _, err = server.communicate(timeout=60)
    assert server.returncode != 0
    assert "model.backend 'vllm'" in err.decode()


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("RLYARD_SAMPLER_BACKEND", "tgi", "use one of hf, vllm"),
    ("RLYARD_SAMPLER_MAX_BATCH_SIZE", "-1", "use >= 1, or 0 for no cap"),
    ("RLYARD_SAMPLER_KEEP_VERSIONS", "0", "keep at least 1 version"),
    ("RLYARD_SAMPLER_POLL_S", "0", "must be > 0 seconds"),
    ("RLYARD_SAMPLER_DTYPE", "float16", "use float32 or bfloat16"),
])
def test_bad_settings_say_how_to_fix_them(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SamplerSettings.from_env("RLYARD_SAMPLER", {variable: value})
