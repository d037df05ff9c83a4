"""Published weight versions and the sampler host that serves them, on the tiny policy: atomic
publication, loading a new version between requests, pinned versions kept while in the window and
refused after it, bad requests refused."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from rlyard.errors import InvalidArgument, NotFound
from trainer.policy import HFPolicy, SamplingParams
from trainer.sampler import SampleRequest, WeightVersionUnavailable
from trainer.sampler.serving import SamplerHost
from trainer.sampler.weights import LATEST, latest, latest_version, load_weights, publish_weights, version_dir

GREEDY = SamplingParams(max_new_tokens=6, temperature=0.0)


@pytest.fixture
def policy(tiny_model_dir: Path) -> HFPolicy:
    return HFPolicy(tiny_model_dir)


def perturbed(policy: HFPolicy, seed: int) -> torch.nn.Module:
    """A copy of the policy's module with noise on every weight (its greedy text differs)."""
    model = copy.deepcopy(policy.model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=generator))
    return model


def prompt(policy: HFPolicy) -> list[int]:
    return policy.tokenizer.encode("how many singer", add_special_tokens=False)


def greedy(policy: HFPolicy, model: torch.nn.Module) -> list[int]:
    return policy.with_model(model).generate([prompt(policy)], GREEDY)[0].token_ids


def test_publish_writes_a_version_then_switches_latest(policy: HFPolicy, tmp_path: Path) -> None:
    root = tmp_path / "weights"
    assert latest(root) is None and latest_version(root) is None
    path = publish_weights(policy.model, root, 3)
    assert path == version_dir(root, 3) == root / "v00000003"
    assert latest_version(root) == 3
    assert sorted(p.name for p in root.iterdir()) == [LATEST, "v00000003"]   # no temporary left
    trained = perturbed(policy, 1)
    publish_weights(trained, root, 4)
    loaded = copy.deepcopy(policy.model)
    load_weights(loaded, latest(root).path)   # type: ignore[union-attr]
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), trained.state_dict().values(),
                                                 strict=True))
    first = latest(root)
    publish_weights(policy.model, root, 4)       # the same version again (a resumed run): other weights
    again = latest(root)
    assert again is not None and first is not None
    assert (again.version, again.path) == (4, first.path) and again.publication != first.publication


def test_publishing_with_keep_deletes_the_oldest_versions(policy: HFPolicy, tmp_path: Path) -> None:
    root = tmp_path / "weights"
    for version in range(5):
        publish_weights(policy.model, root, version, keep=3)
    assert sorted(p.name for p in root.glob("v*")) == ["v00000002", "v00000003", "v00000004"]
    publish_weights(policy.model, root, 1, keep=3)      # an earlier step again (a resumed run): kept
    assert sorted(p.name for p in root.glob("v*")) == ["v00000001", "v00000002", "v00000003", "v00000004"]
    assert latest_version(root) == 1
    with pytest.raises(ValueError, match="keep at least 1"):
        publish_weights(policy.model, root, 6, keep=0)


def test_a_broken_pointer_or_foreign_weights_are_refused(policy: HFPolicy, tmp_path: Path) -> None:
    root = tmp_path / "weights"
    root.mkdir()
    (root / LATEST).write_text("v1")
    with pytest.raises(ValueError, match="does not parse"):
        latest(root)
    other = torch.nn.Linear(3, 2)
    publish_weights(other, root, 1)
    with pytest.raises(ValueError, match="do not fit this model"):
        load_weights(copy.deepcopy(policy.model), version_dir(root, 1))


async def test_the_host_loads_new_versions_between_requests_and_keeps_pinned_ones(policy: HFPolicy,
                                                                                   tmp_path: Path) -> None:
    root = tmp_path / "weights"
    host = SamplerHost(policy, weights_root=root, keep_versions=2, poll_s=60)   # no watcher tick in the test
    await host.start()
    try:
        ids = prompt(policy)
        base_tokens = greedy(policy, policy.model)
        gen = await host.sample(SampleRequest(ids, GREEDY))
        assert (gen.token_ids, gen.weight_version) == (base_tokens, 0)

        v1 = perturbed(policy, 1)
        publish_weights(v1, root, 1)
        assert (await host.info()).weight_version == 1
        gen = await host.sample(SampleRequest(ids, GREEDY))
        assert (gen.token_ids, gen.weight_version) == (greedy(policy, v1), 1) and gen.token_ids != base_tokens
        # a trajectory that began on version 0 goes on with it
        pinned = await host.sample(SampleRequest(ids, GREEDY, weight_version=0))
        assert (pinned.token_ids, pinned.weight_version) == (base_tokens, 0)

        publish_weights(perturbed(policy, 2), root, 2)
        await host.refresh()
        assert host.loaded_versions == (1, 2)
        with pytest.raises(WeightVersionUnavailable, match="no longer loaded"):
            await host.sample(SampleRequest(ids, GREEDY, weight_version=0))
        with pytest.raises(NotFound, match="never published"):
            await host.sample(SampleRequest(ids, GREEDY, weight_version=9))
        assert host.stats.refused_versions == 2 and host.stats.loads == 2
        assert host.stats.by_version == {0: 2, 1: 1}
    finally:
        await host.aclose()


async def test_the_host_starts_from_the_latest_published_version(policy: HFPolicy, tmp_path: Path) -> None:
    root = tmp_path / "weights"
    v5 = perturbed(policy, 5)
    publish_weights(v5, root, 5)
    host = SamplerHost(policy, weights_root=root, poll_s=60)
    await host.start()
    try:
        gen = await host.sample(SampleRequest(prompt(policy), GREEDY))
        assert (gen.token_ids, gen.weight_version) == (greedy(policy, v5), 5)
        assert host.loaded_versions == (5,)
    finally:
        await host.aclose()


async def test_bad_requests_are_refused_with_what_is_wrong(policy: HFPolicy) -> None:
    host = SamplerHost(policy, max_model_len=32)
    await host.start()
    try:
        with pytest.raises(InvalidArgument, match="prompt_ids is empty"):
            await host.sample(SampleRequest([], GREEDY))
        with pytest.raises(InvalidArgument, match="exceeds the model's 32 positions"):
            await host.sample(SampleRequest([5] * 30, GREEDY))
        with pytest.raises(InvalidArgument, match="outside the vocabulary"):
            await host.sample(SampleRequest([5, host.vocab_size], GREEDY))
    finally:
        await host.aclose()


async def test_a_version_published_again_replaces_the_one_held(policy: HFPolicy, tmp_path: Path) -> None:
    """A resumed run publishes an earlier step again, with other weights: the host serves those."""
    root = tmp_path / "weights"
    host = SamplerHost(policy, weights_root=root, keep_versions=3, poll_s=60)
    await host.start()
    try:
        ids = prompt(policy)
        first, second, again = perturbed(policy, 1), perturbed(policy, 2), perturbed(policy, 3)
        publish_weights(first, root, 1)
        await host.refresh()
        publish_weights(second, root, 2)
        await host.refresh()
        publish_weights(again, root, 1)
        await host.refresh()
        assert host.weight_version == 1 and host.loaded_versions == (0, 2, 1)
        gen = await host.sample(SampleRequest(ids, GREEDY))
        assert (gen.token_ids, gen.weight_version) == (greedy(policy, again), 1)
        assert greedy(policy, again) != greedy(policy, first)
    finally:
        await host.aclose()
