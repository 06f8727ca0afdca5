"""DeMem penalty: the reference formula at tau = 0 for every method, the size of H, and its gradient."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest
import torch

from demem.evasion import AttackConfig
from demem.methods import METHODS, MethodConfig, generate, objective
from demem.models import build_model
from demem.penalty import DeMemConfig, high_risk_count, high_risk_mask, load_risk_table, penalty, scores_for
from demem.registry import BUILTIN

METHOD_NAMES = ["standard", "pgd_at", "trades", "mart", "fgsm_rs", "dp_sgd", "dp_pgd_at", "dp_trades"]


def _model_and_batch(seed=0, b=32):
    torch.manual_seed(seed)
    model = build_model("small-cnn", in_channels=1, num_classes=10, image_size=28, mean=(0.5,), std=(0.25,))
    x = torch.rand(b, 1, 28, 28)
    y = torch.randint(0, 10, (b,))
    return model, x, y


def test_every_method_is_covered():
    assert [n for n in METHODS.names() if METHODS.origin(n) == BUILTIN] == sorted(METHOD_NAMES)  # plugins: their own


@pytest.mark.parametrize("name", METHOD_NAMES)
@pytest.mark.parametrize("lam", [0.2, 0.6])
def test_tau_zero_equals_reference_objective(name, lam):
    model, x, y = _model_and_batch()
    method = MethodConfig(name=name)
    x_adv = generate(
        model, x, y, method=method, attack=AttackConfig(eps=0.1, steps=2), generator=torch.Generator().manual_seed(0)
    )
    model.eval()  # BatchNorm in eval: two forward passes on the same input give the same logits
    out = objective(model, x, y, x_adv, method=method, demem=DeMemConfig(lam=lam, risk_threshold=0.0))
    plain = objective(model, x, y, x_adv, method=method, demem=DeMemConfig(lam=0.0))
    reference = plain.method_loss + lam * torch.var(plain.per_sample)  # the DeMem reference code's objective
    assert abs(out.total.item() - reference.item()) < 1e-6
    assert out.high_risk.all()


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_lambda_zero_is_the_undefended_method(name):
    model, x, y = _model_and_batch(1)
    method = MethodConfig(name=name)
    x_adv = generate(
        model, x, y, method=method, attack=AttackConfig(eps=0.1, steps=2), generator=torch.Generator().manual_seed(0)
    )
    model.eval()
    out = objective(model, x, y, x_adv, method=method, demem=DeMemConfig(lam=0.0, risk_threshold=0.5))
    raw = METHODS.get(name).loss(model, x, x_adv, y, method)
    assert out.total.item() == raw.loss.item()
    assert out.penalty.item() == 0


def test_penalty_matches_slow_formula_with_threshold():
    torch.manual_seed(3)
    l = torch.rand(50) * 3
    for tau in (0.0, 0.3, 0.5, 0.9):
        cfg = DeMemConfig(lam=0.4, risk_threshold=tau)
        got, mask = penalty(l, cfg)
        mean = l.mean()
        # Slow oracle: rank by |l_i - mean| and sum over the top ceil((1 - tau) B).
        order = sorted(range(50), key=lambda i: -abs(l[i].item() - mean.item()))
        chosen = order[: _size_of_h(tau, 50)]
        want = 0.4 * sum((l[i].item() - mean.item()) ** 2 for i in chosen) / 49
        assert got.item() == pytest.approx(want, rel=1e-6)
        assert sorted(torch.nonzero(mask).flatten().tolist()) == sorted(chosen)


def _size_of_h(tau: float, b: int) -> int:
    """ceil((1 - tau) * B) in decimal arithmetic on tau as written: the size the docs promise."""
    return math.ceil((1 - Decimal(str(tau))) * b)


@pytest.mark.parametrize("b", [2, 7, 10, 64, 100, 128, 255, 256])
@pytest.mark.parametrize("tau", [0.0, 0.1, 0.2, 0.25, 0.3, 0.5, 0.6, 0.7, 0.75, 0.9, 0.95, 0.99])
def test_selected_set_has_the_size_tau_implies(b, tau):
    risk = torch.randn(b)
    assert int(high_risk_mask(risk, tau).sum()) == high_risk_count(tau, b) == _size_of_h(tau, b)


def test_size_of_h_has_no_float_rounding():
    # Float arithmetic gives (1 - 0.7) * 10 = 3.0000000000000004 and (1 - 0.95) * 100 = 5.000000000000004,
    # which a plain ceil turns into 4 and 6.
    assert math.ceil((1 - 0.7) * 10) == 4 and math.ceil((1 - 0.95) * 100) == 6
    assert high_risk_count(0.7, 10) == 3 and high_risk_count(0.95, 100) == 5
    assert high_risk_count(0.5, 7) == 4  # a true fraction still rounds up
    assert int(high_risk_mask(torch.randn(10), 0.7).sum()) == 3
    assert int(high_risk_mask(torch.randn(100), 0.95).sum()) == 5


def test_ties_are_selected_deterministically():
    risk = torch.ones(10)
    mask = high_risk_mask(risk, 0.5)
    assert mask.tolist() == [True] * 5 + [False] * 5


def test_loss_risk_picks_the_largest_losses():
    l = torch.tensor([0.1, 5.0, 0.2, 3.0, 0.3, 0.4, 0.5, 0.6])
    _, mask = penalty(l, DeMemConfig(lam=1.0, risk_threshold=0.75, risk="loss"))
    assert torch.nonzero(mask).flatten().tolist() == [1, 3]


def test_memorization_risk_absolute_threshold():
    l = torch.rand(6)
    mem = torch.tensor([0.0, 0.9, 0.2, 0.5, 0.49, 1.0])
    cfg = DeMemConfig(lam=1.0, risk_threshold=0.5, risk="memorization", risk_file="x.npz", threshold_mode="absolute")
    _, mask = penalty(l, cfg, mem)
    assert mask.tolist() == [False, True, False, True, False, True]


def test_gradient_pulls_high_deviation_losses_to_the_mean():
    torch.manual_seed(0)
    l = (torch.rand(40) + torch.linspace(0, 3, 40)).requires_grad_(True)
    pen, mask = penalty(l, DeMemConfig(lam=1.0, risk_threshold=0.8))
    pen.backward()
    dev = (l - l.mean()).detach()
    top = mask.nonzero().flatten()
    # Gradient descent moves l_i against the gradient: for the selected samples the gradient has the
    # sign of their deviation, so a step shrinks |l_i - mean|.
    assert (torch.sign(l.grad[top]) == torch.sign(dev[top])).all()
    stepped = (l - 0.05 * l.grad).detach()
    assert ((stepped[top] - stepped.mean()).abs() < dev[top].abs()).all()
    # ... and the penalty itself goes down after the step.
    assert penalty(stepped, DeMemConfig(lam=1.0, risk_threshold=0.8))[0] < pen


def test_penalty_of_a_single_sample_is_zero():
    pen, mask = penalty(torch.tensor([1.5], requires_grad=True), DeMemConfig(lam=1.0))
    assert pen.item() == 0 and not mask.any()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"lam": -0.1}, "lambda"),
        ({"lam": float("nan")}, "lambda"),
        ({"risk_threshold": 1.0}, r"\[0, 1\)"),
        ({"risk_threshold": -0.1}, r"\[0, 1\)"),
        ({"risk": "entropy"}, "risk must be one of"),
        ({"risk": "memorization"}, "risk_file"),
        ({"risk_file": "a.npz"}, "only used"),
        ({"threshold_mode": "absolute"}, "memorization"),
    ],
)
def test_bad_demem_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeMemConfig(**kwargs)


@pytest.mark.parametrize("suffix", [".npz", ".csv", ".parquet"])
def test_risk_table_round_trip(tmp_path, suffix):
    ids = np.array([5, 2, 9, 7])
    mem = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    path = tmp_path / f"risk{suffix}"
    if suffix == ".npz":
        np.savez(path, sample_id=ids, memorization=mem)
    else:
        import pandas as pd

        df = pd.DataFrame({"sample_id": ids, "memorization": mem})
        df.to_csv(path, index=False) if suffix == ".csv" else df.to_parquet(path)
    table = load_risk_table(path)
    np.testing.assert_allclose(scores_for(np.array([9, 5, 7]), table), [0.3, 0.1, 0.4])
    with pytest.raises(ValueError, match="no score for 1"):
        scores_for(np.array([9, 3]), table)
