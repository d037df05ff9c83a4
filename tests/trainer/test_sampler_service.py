"""The sampler service on 127.0.0.1 (port 0) with the tiny policy, through ``RemoteSampler``: the
same tokens and log-probs as the local sampler for the same seeds, the weight version on every
answer, a published version picked up between requests, pinned versions kept or refused, bad input
refused with a clear status."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from rlyard.domain import ImagePart
from rlyard.errors import InvalidArgument, NotFound, Unauthenticated, Unavailable
from rlyard.sampler.v1 import sampler_pb2, sampler_pb2_grpc
from rlyard.server import RunningServer, start_server
from rlyard.settings import ServerSettings
from rlyard.tls import ClientSettings
from trainer.model import init_policy
from trainer.policy import HFPolicy, SamplingParams, VLMPolicy, load_policy
from trainer.sampler import LocalSampler, Sampler, SampleRequest, WeightVersionUnavailable, build_sampler
from trainer.sampler.remote import RemoteSampler
from trainer.sampler.service import sampler_service
from trainer.sampler.serving import SamplerHost
from trainer.sampler.settings import SamplerSettings

GREEDY = SamplingParams(max_new_tokens=6, temperature=0.0)

StartSampler = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
def policy(tiny_model_dir: Path) -> HFPolicy:
    return HFPolicy(tiny_model_dir)


@pytest.fixture
async def start_sampler(tiny_model_dir: Path) -> AsyncIterator[StartSampler]:
    """Starts sampler services over the tiny checkpoint; stops them at teardown."""
    running: list[RunningServer] = []

    async def start(weights_root: Path | None = None, **host: object) -> RunningServer:
        built = SamplerHost(HFPolicy(tiny_model_dir), model_name="tiny", weights_root=weights_root, **host)  # type: ignore[arg-type]
        server = await start_server(sampler_service(SamplerSettings(policy_dir=tiny_model_dir), host=built),
                                    ServerSettings(port=0))
        running.append(server)
        await server.wait_ready(30)
        return server

    yield start
    for server in running:
        await server.stop(0)


def perturbed(policy: HFPolicy, seed: int) -> torch.nn.Module:
    model = copy.deepcopy(policy.model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=generator))
    return model


def prompts(policy: HFPolicy) -> list[list[int]]:
    return [policy.tokenizer.encode(t, add_special_tokens=False)
            for t in ("select name", "how many singer", "count the table", "answer the query")]


async def sample_all(sampler: Sampler, requests: list[SampleRequest]) -> list:
    return list(await asyncio.gather(*(sampler.sample(r) for r in requests)))


async def test_the_service_samples_what_the_local_sampler_samples(policy: HFPolicy,
                                                                  start_sampler: StartSampler) -> None:
    server = await start_sampler()
    remote = RemoteSampler(server.address)
    local = LocalSampler(policy)
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=0)
    requests = [SampleRequest(p, dataclass_seed(params, 100 + i), cache_key=f"t{i}")
                for i, p in enumerate(prompts(policy))]
    try:
        assert isinstance(remote, Sampler)
        want = await sample_all(local, requests)
        got = await sample_all(remote, requests)
        assert remote.calls == 1 and remote.rows == 4          # one tick: one GenerateBatch
        assert [g.token_ids for g in got] == [g.token_ids for g in want]
        assert any(len(set(g.token_ids)) > 1 for g in got)       # sampled, not a constant
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-6, rtol=0)
            torch.testing.assert_close(torch.tensor(a.raw_logprobs), torch.tensor(b.raw_logprobs), atol=1e-6, rtol=0)
            assert (a.finish_reason, a.stop_reason) == (b.finish_reason, b.stop_reason)
        assert {g.weight_version for g in got} == {0}
        for key in ("t0", "t1"):
            remote.release(key)
        await asyncio.sleep(0)
        # a lone request keeps its own seed, on both
        assert (await remote.sample(requests[2])).token_ids == (await local.sample(requests[2])).token_ids
    finally:
        await remote.aclose()
        await local.aclose()


def dataclass_seed(params: SamplingParams, seed: int) -> SamplingParams:
    return dataclasses.replace(params, seed=seed)


async def test_a_published_version_is_served_from_the_next_request(policy: HFPolicy, start_sampler: StartSampler,
                                                                    tmp_path: Path) -> None:
    root = tmp_path / "weights"
    server = await start_sampler(root, keep_versions=2, poll_s=0.05)
    remote = build_sampler("remote", policy, target=server.address, weights_root=root)
    assert isinstance(remote, RemoteSampler)
    ids = prompts(policy)[1]
    base = policy.generate([ids], GREEDY)[0].token_ids
    try:
        first = await remote.sample(SampleRequest(ids, GREEDY))
        assert (first.token_ids, first.weight_version) == (base, 0)
        v1 = perturbed(policy, 1)
        await remote.sync_weights(v1, 1)                      # returns once the service serves version 1
        assert remote.weight_version == 1
        info = await remote.client.info()
        assert (info.weight_version, info.loaded_versions, info.latest_published) == (1, (0, 1), 1)
        after = await remote.sample(SampleRequest(ids, GREEDY))
        want = policy.with_model(v1).generate([ids], GREEDY)[0].token_ids
        assert (after.token_ids, after.weight_version) == (want, 1) and want != base
        # a trajectory begun on version 0 goes on with version 0 ...
        pinned = await remote.sample(SampleRequest(ids, GREEDY, weight_version=0))
        assert (pinned.token_ids, pinned.weight_version) == (base, 0)
        # ... until version 0 leaves the window of two
        await remote.sync_weights(perturbed(policy, 2), 2)
        with pytest.raises(WeightVersionUnavailable, match="weight version 0 is no longer loaded"):
            await remote.sample(SampleRequest(ids, GREEDY, weight_version=0))
        with pytest.raises(NotFound, match="weight version 7 was never published"):
            await remote.sample(SampleRequest(ids, GREEDY, weight_version=7))
    finally:
        await remote.aclose()


async def test_bad_requests_get_clear_statuses(policy: HFPolicy, start_sampler: StartSampler) -> None:
    server = await start_sampler(max_model_len=64)
    remote = RemoteSampler(server.address, retry_window_s=0)
    try:
        with pytest.raises(InvalidArgument, match="prompt_ids is empty"):
            await remote.sample(SampleRequest([], GREEDY))
        with pytest.raises(InvalidArgument, match="exceeds the model's 64 positions"):
            await remote.sample(SampleRequest([5] * 60, GREEDY))
        # in one batch, a bad request fails alone
        good, bad = await asyncio.gather(remote.sample(SampleRequest(prompts(policy)[0], GREEDY)),
                                         remote.sample(SampleRequest([5, 10**6], GREEDY)), return_exceptions=True)
        assert not isinstance(good, BaseException) and good.weight_version == 0
        assert isinstance(bad, InvalidArgument) and "outside the vocabulary" in str(bad)
        with pytest.raises(RuntimeError, match="no weights_root"):
            await remote.sync_weights(policy.model, 1)
    finally:
        await remote.aclose()
    # raw protobuf: params left out are refused by name
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = sampler_pb2_grpc.SamplerServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Generate(sampler_pb2.GenerateRequest(prompt_ids=[5, 6]), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_new_tokens=0" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Generate(sampler_pb2.GenerateRequest(
                prompt_ids=[5, 6], params=sampler_pb2.SamplingParams(max_new_tokens=2), weight_version=3), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_vlm")
    init_policy(out, vision=True)
    return out


async def test_images_travel_to_a_vision_policy_and_back(vlm_dir: Path, make_png: Callable[..., bytes]) -> None:
    vlm = load_policy(vlm_dir)
    assert isinstance(vlm, VLMPolicy)
    shown = [ImagePart(make_png(40, 30, (220, 20, 20)), "image/png", 40, 30, "photo"),
             ImagePart(make_png(64, 64, (20, 20, 220), noise=True), "image/png", 64, 64, "map")]
    server = await start_server(sampler_service(SamplerSettings(), host=SamplerHost(load_policy(vlm_dir))),
                                ServerSettings(port=0))
    remote = build_sampler("remote", vlm, target=server.address)
    local = LocalSampler(vlm)
    try:
        await server.wait_ready(30)
        assert isinstance(remote, RemoteSampler) and remote.supports_images
        assert remote.image_tokens(shown[1]) == vlm.image_tokens(shown[1])
        params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=5)
        requests = [SampleRequest(vision_prompt(vlm, shown[:1]), params, tuple(shown[:1])),
                    SampleRequest(vision_prompt(vlm, shown), params, tuple(shown))]
        want = await sample_all(local, requests)
        got = await sample_all(remote, requests)
        assert [g.token_ids for g in got] == [g.token_ids for g in want]
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-6, rtol=0)
        assert {g.weight_version for g in got} == {0}
        text_only = RemoteSampler(server.address)
        with pytest.raises(ValueError, match="takes no images"):
            await text_only.sample(requests[0])
        await text_only.aclose()
    finally:
        await remote.aclose()
        await local.aclose()
        await server.stop(0)


def vision_prompt(policy: VLMPolicy, shown: list[ImagePart]) -> list[int]:
    """A chat prompt showing ``shown``, each image's pad expanded to its run."""
    content = [*({"type": "image", "image_id": i.image_id} for i in shown), {"type": "text", "text": "what is it?"}]
    rendered = policy.tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                    add_generation_prompt=True, tokenize=True)
    ids = rendered if isinstance(rendered, list) else rendered["input_ids"]
    out: list[int] = []
    pending = list(shown)
    for token in ids:
        out.extend([token] * policy.image_tokens(pending.pop(0)) if token == policy.image_pad_id else [int(token)])
    return out


async def test_a_tls_service_with_a_token_answers_only_a_sampler_that_sends_its_token(
    tiny_model_dir: Path, policy: HFPolicy, pki: Any
) -> None:
    """The sampler service over TLS with a token (certificates of ``rlyard certs``); samplers dialled
    as the trainer and the workers dial it, from ``ClientSettings`` (RLYARD_CLIENT_*)."""
    server = await start_server(sampler_service(SamplerSettings(), host=SamplerHost(HFPolicy(tiny_model_dir))),
                                pki.mutual(auth_token="s3cret"))
    tls = {"tls_ca": pki.tls("ca.pem"), "tls_cert": pki.tls("client.pem"), "tls_key": pki.tls("client-key.pem")}

    def dial(client: ClientSettings) -> RemoteSampler:
        return RemoteSampler(server.address, retry_window_s=0, auth_token=client.token_for(server.address),
                             tls=client.channel_tls())

    with_token = dial(ClientSettings(**tls, auth_token="other", auth_tokens=(f"{server.address}=s3cret",)))
    without = dial(ClientSettings(**tls))
    plaintext = RemoteSampler(server.address, retry_window_s=0, auth_token="s3cret")
    try:
        await server.wait_ready(30)
        request = SampleRequest(prompts(policy)[0], GREEDY)
        want = policy.generate([prompts(policy)[0]], GREEDY)[0].token_ids
        assert (await with_token.sample(request)).token_ids == want
        with pytest.raises(Unauthenticated):
            await without.sample(request)
        with pytest.raises(Unavailable):       # no TLS handshake: the port never answers
            await asyncio.wait_for(plaintext.sample(request), 20)
    finally:
        for sampler in (with_token, without, plaintext):
            await sampler.aclose()
        await server.stop(0)
