"""Gradient agreement (experiments.agreement): the pairwise statistics by hand, the batch extrapolation,
and SFT gradients at fixed weights on the tiny policy (grpo_update's gradient hook: test_sft_grpo.py;
GRPO gradients through real services: tests/bench/test_grad_agreement_bench.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from experiments.agreement import agreement, batch_for_share, flat_gradient, sft_gradients
from trainer.policy.hf import HFPolicy
from trainer.sft import SftData, load_sft_examples, sft_loss


def test_agreement_by_hand() -> None:
    same = agreement([torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0])])
    assert same.mean_cosine == pytest.approx(1.0) and same.signal_share == pytest.approx(2 / 2.5)
    # [1,0], [0,1], [1,1]: cosines 0, 1/√2, 1/√2; dots 0, 1, 1 (mean 2/3); squared norms 1, 1, 2 (mean 4/3)
    a = agreement([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])])
    assert a.batches == 3
    assert a.mean_cosine == pytest.approx(2 / 3 / math.sqrt(2))
    assert (a.min_cosine, a.max_cosine) == (pytest.approx(0.0), pytest.approx(1 / math.sqrt(2)))
    assert a.signal_share == pytest.approx(0.5)
    assert a.mean_norm == pytest.approx((2 + math.sqrt(2)) / 3)
    opposite = agreement([torch.tensor([1.0, 1.0]), torch.tensor([-1.0, -1.0])])
    assert opposite.mean_cosine == pytest.approx(-1.0) and opposite.signal_share == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="at least two"):
        agreement([torch.ones(3)])
    with pytest.raises(ValueError, match="different lengths"):
        agreement([torch.ones(3), torch.ones(4)])


def test_independent_noise_gives_the_predicted_share() -> None:
    """g_i = μ + ε_i with |μ|² = 1 and E|ε|² = 4: the share estimates 1 / (1 + 4) = 0.2."""
    gen = torch.Generator().manual_seed(0)
    dim = 20_000
    mu = torch.zeros(dim)
    mu[0] = 1.0
    grads = [mu + torch.randn(dim, generator=gen) * (2 / math.sqrt(dim)) for _ in range(40)]
    a = agreement(grads)
    assert a.signal_share == pytest.approx(0.2, abs=0.02)
    assert a.mean_cosine == pytest.approx(0.2, abs=0.02)


def test_batch_for_share() -> None:
    # share s at batch B: noise/signal = (1-s)/s · B per sample; target t needs (1-s)/s · B · t/(1-t)
    assert batch_for_share(0.5, 64, 0.5) == pytest.approx(64)
    assert batch_for_share(0.2, 10, 0.5) == pytest.approx(40)
    assert batch_for_share(0.005, 64, 0.19) == pytest.approx(64 * 199 * 0.19 / 0.81)
    assert batch_for_share(0.0, 64, 0.19) is None and batch_for_share(-0.01, 64, 0.19) is None
    for bad in ((0.1, 64, 1.0), (0.1, 64, 0.0), (1.0, 64, 0.5), (0.1, 0, 0.5)):
        with pytest.raises(ValueError):
            batch_for_share(*bad)


def test_flat_gradient_lines_up_parameters_without_gradient(tiny_model_dir: Path) -> None:
    policy = HFPolicy(tiny_model_dir)
    total = sum(p.numel() for p in policy.model.parameters())
    assert torch.count_nonzero(flat_gradient(policy.model)) == 0 and flat_gradient(policy.model).numel() == total
    first = next(policy.model.parameters())
    first.grad = torch.ones_like(first)
    g = flat_gradient(policy.model)
    assert g.numel() == total and float(g.sum()) == first.numel()


def _demos(path: Path) -> Path:
    lines = [{"messages": [{"role": "user", "content": f"how many singer {i}"},
                           {"role": "assistant", "content": f"<answer>{i % 7}</answer>"}]} for i in range(12)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_sft_gradients_are_the_loss_gradients_at_fixed_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    policy = HFPolicy(tiny_model_dir)
    demos = _demos(tmp_path / "demos.jsonl")
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    done: list[int] = []
    grads = sft_gradients(policy, demos, batches=3, batch_size=4, seed=1, on_batch=done.append)
    assert done == [1, 2, 3] and len(grads) == 3
    assert all(torch.equal(before[k], v) for k, v in policy.model.state_dict().items())   # nothing was updated
    assert all(p.grad is None for p in policy.model.parameters())
    # the second gradient is the loss gradient of the data's second batch, computed directly
    data = SftData(load_sft_examples(demos, policy.tokenizer), seed=1, pad_token_id=policy.pad_token_id)
    data.next_batch(4)
    loss, _ = sft_loss(policy, data.next_batch(4))
    loss.backward()
    assert torch.allclose(grads[1], flat_gradient(policy.model), atol=1e-6)
    assert not torch.allclose(grads[0], grads[1])
    assert 0 < agreement(grads).mean_cosine < 1
