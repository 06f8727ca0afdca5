"""Attacks against independent references: saturated pixels must move, TRADES's and MART's inner
attacks are their authors' loops (yaodongyu/TRADES `trades.py`, YisenWang/MART `mart.py`: their
start, their step order), PGD is torchattacks's PGD, and each method starts where its authors start.

The bound test exists because a clamp inside the differentiated graph has zero gradient at and beyond
[0, 1]: an attack written that way silently freezes every pixel at 0 or 1 (half of a Fashion-MNIST
image), and a comparison of the attack with itself cannot see it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from demem.evasion import AttackConfig, fgsm, kl_attack, pgd
from demem.methods import METHODS, MethodConfig, generate
from demem.models import build_model
from demem.registry import BUILTIN
from demem.train import RunConfig

torchattacks = pytest.importorskip("torchattacks")

SIDE = 6  # a 1 x 6 x 6 image: 12 pixels at 0, 12 at 1, 12 inside the box


def _linear_probe():
    """A two-class linear model z = W flatten(x) and an image whose loss gradient points *into* the
    box at every saturated pixel, for the CE loss with y = 0 and for the KL attack alike.

    z_1 - z_0 = sum_j w_j x_j with w_j = +1 where x_j = 0, -1 where x_j = 1, +-1 inside. For CE with
    y = 0 the input gradient is q_1 * w (q_1 > 0), so +1 at the zeros and -1 at the ones. For the KL
    attack it is (q'_1 - p_1) * w, the same signs as long as the iterate has moved z_1 - z_0 up.
    """
    g = torch.Generator().manual_seed(0)
    n = SIDE * SIDE
    kind = torch.arange(n) % 3  # 0: pixel at 0, 1: pixel at 1, 2: inside
    x = torch.where(kind == 0, 0.0, torch.where(kind == 1, 1.0, 0.3 + 0.4 * torch.rand(n, generator=g)))
    w = torch.where(kind == 0, 1.0, torch.where(kind == 1, -1.0, torch.randint(0, 2, (n,), generator=g) * 2.0 - 1))
    model = nn.Sequential(nn.Flatten(), nn.Linear(n, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(n), 0.1 * w]))
    shape = (4, 1, SIDE, SIDE)  # four copies of the image
    return model, x.view(1, 1, SIDE, SIDE).expand(shape).clone(), w.view(1, 1, SIDE, SIDE).expand(shape), kind


def _outward_start(w: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
    """A start that pushes every saturated pixel out of the box (so the box clips it back to the bound)
    and moves the inside pixels along w (so z_1 - z_0 grows and the KL gradient is inward too)."""
    out = torch.where((kind == 2).view(1, 1, SIDE, SIDE), w, -w)
    return 0.01 * out


def _assert_saturated_pixels_moved(x, x_adv, kind):
    at0 = (kind == 0).view(1, 1, SIDE, SIDE).expand_as(x)
    at1 = (kind == 1).view(1, 1, SIDE, SIDE).expand_as(x)
    frozen0 = int((x_adv[at0] <= 0).sum())
    frozen1 = int((x_adv[at1] >= 1).sum())
    assert frozen0 == 0 and frozen1 == 0, f"{frozen0} pixels stuck at 0 and {frozen1} at 1 of {int(at0.sum())} each"


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
@pytest.mark.parametrize("attack", ["pgd", "pgd_keep_best", "fgsm", "kl"])
def test_saturated_pixel_with_inward_gradient_moves(attack, norm, eps):
    model, x, w, kind = _linear_probe()
    y = torch.zeros(x.shape[0], dtype=torch.long)
    cfg = AttackConfig(
        name="fgsm" if attack == "fgsm" else "pgd",
        eps=eps,
        norm=norm,
        steps=3,
        step_size=eps / 3,
        keep_best=attack == "pgd_keep_best",
    )
    start = _outward_start(w, kind)
    if attack == "fgsm":
        x_adv = fgsm(model, x, y, cfg)
    elif attack == "kl":
        x_adv = kl_attack(model, x, cfg, start=start)
    else:
        x_adv = pgd(model, x, y, cfg, start=start)
    _assert_saturated_pixels_moved(x, x_adv, kind)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
@pytest.mark.parametrize("method", ["pgd_at", "mart", "fgsm_rs", "dp_pgd_at"])
def test_training_attacks_move_saturated_pixels(method, norm, eps):
    # Through the method's own example generator, from its own random start (uniform or Gaussian):
    # about half of the saturated pixels start outside the box and are clipped onto the bound.
    model, x, w, kind = _linear_probe()
    y = torch.zeros(x.shape[0], dtype=torch.long)
    for seed in range(3):
        cfg = AttackConfig(eps=eps, norm=norm, steps=3, step_size=eps / 3)
        x_adv = generate(
            model, x, y, method=MethodConfig(name=method), attack=cfg, generator=torch.Generator().manual_seed(seed)
        )
        _assert_saturated_pixels_moved(x, x_adv, kind)


@pytest.fixture(params=["untrained", "trained"])
def cnn_and_batch(request, fmnist_pool):
    """A small CNN (freshly initialised, or the session's trained undefended one) and 64 real images."""
    if request.param == "trained":
        model = request.getfixturevalue("trained_standard").model
    else:
        torch.manual_seed(0)
        model = build_model("small-cnn", in_channels=1, num_classes=10, image_size=28, mean=(0.286,), std=(0.353,))
    model.eval()
    x = fmnist_pool.images[1000:1064].float() / 255
    y = fmnist_pool.labels[1000:1064]
    return model, x, y


def _kl(model, x, x_adv):
    """KL(f(x) || f(x_adv)) per sample, from its definition sum_k p_k (log p_k - log q_k)."""
    log_p = F.log_softmax(model(x), dim=1)
    log_q = F.log_softmax(model(x_adv), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1)


def _authors_trades_attack(model, x, eps, alpha, steps, noise, kl="authors"):
    """The L-inf attack of the TRADES authors' `trades_loss` (yaodongyu/TRADES, trades.py), step for
    step: x_adv = x + 0.001 * randn, *not* clipped; then per step the gradient of the summed KL
    (nn.KLDivLoss(reduction="sum") of log_softmax(f(x_adv)) against softmax(f(x))) with respect to
    x_adv, a signed step, the eps-box around x as min/max, and the clamp into [0, 1].

    kl="formula" computes the same summed KL as sum p (log p - log q) from log_softmax, our
    arithmetic: near the start
    the KL's gradients are ~1e-9, so their signs depend on the order of float operations, and only
    the same arithmetic can be compared pixel for pixel."""
    criterion_kl = nn.KLDivLoss(reduction="sum")
    x_adv = x.detach() + 0.001 * noise
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            if kl == "authors":
                loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
            else:
                loss_kl = _kl(model, x, x_adv).sum()
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + alpha * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    return x_adv


def _authors_mart_attack(model, x, y, eps, alpha, steps, noise):
    """The L-inf attack of the MART authors' `mart_loss` (YisenWang/MART, mart.py): the same start and
    step order as TRADES's, on the batch-mean cross-entropy."""
    x_adv = x.detach() + 0.001 * noise
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_ce = F.cross_entropy(model(x_adv), y)
        grad = torch.autograd.grad(loss_ce, [x_adv])[0]
        x_adv = x_adv.detach() + alpha * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    return x_adv


@pytest.mark.parametrize("steps", [3, 10])
def test_trades_attack_is_its_authors(cnn_and_batch, steps):
    model, x, y = cnn_and_batch
    eps, alpha = 0.1, 0.1 / 4
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    want = _authors_trades_attack(model, x, eps, alpha, steps, noise, kl="formula")
    authors = _authors_trades_attack(model, x, eps, alpha, steps, noise)
    got = generate(
        model,
        x,
        y,
        method=MethodConfig(name="trades"),
        attack=AttackConfig(eps=eps, steps=steps, step_size=alpha),
        generator=torch.Generator().manual_seed(5),
    )  # the same N(0, I) draw
    # At the start the KL gradients are tiny (1e-9 on a fresh network), so a sign is only
    # reproducible by the same arithmetic: with the same KL formula the authors' loop must agree to
    # float tolerance on every pixel; with their nn.KLDivLoss, on the KL the attack reaches (signs of
    # ~1e-9 gradients flip with the arithmetic: 26% of pixels at 10 steps on the fresh network).
    assert torch.allclose(got, want, rtol=0, atol=1e-6), f"{int(((got - want).abs() > 1e-6).sum())} pixels differ"
    with torch.no_grad():
        assert _kl(model, x, got).sum().item() == pytest.approx(_kl(model, x, authors).sum().item(), rel=0.05)


@pytest.mark.parametrize("steps", [3, 10])
def test_mart_attack_is_its_authors(cnn_and_batch, steps):
    model, x, y = cnn_and_batch
    eps, alpha = 0.1, 0.1 / 4
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
    want = _authors_mart_attack(model, x, y, eps, alpha, steps, noise)
    got = generate(
        model,
        x,
        y,
        method=MethodConfig(name="mart"),
        attack=AttackConfig(eps=eps, steps=steps, step_size=alpha),
        generator=torch.Generator().manual_seed(6),
    )
    assert torch.allclose(got, want, rtol=0, atol=1e-6), f"{int(((got - want).abs() > 1e-6).sum())} pixels differ"


@pytest.mark.parametrize("method", ["trades", "mart"])
def test_the_clipped_start_is_not_the_authors(cnn_and_batch, method):
    """What these references catch: the same loops started from the start clipped into [0, 1] (our
    earlier default) end elsewhere on many pixels, because half of a Fashion-MNIST image is 0."""
    model, x, y = cnn_and_batch
    eps, alpha, steps = 0.1, 0.1 / 4, 3
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    clipped = (x + 0.001 * noise).clamp(0, 1) - x
    if method == "trades":
        authors = _authors_trades_attack(model, x, eps, alpha, steps, noise)
        from_clipped = _authors_trades_attack(model, x, eps, alpha, steps, clipped / 0.001)
    else:
        authors = _authors_mart_attack(model, x, y, eps, alpha, steps, noise)
        from_clipped = _authors_mart_attack(model, x, y, eps, alpha, steps, clipped / 0.001)
    differ = ((authors - from_clipped).abs() > 1e-6).float().mean().item()
    assert differ > 0.05, differ


@pytest.mark.parametrize("steps", [3, 10])
def test_trades_attack_is_as_strong_as_torchattacks_tpgd(cnn_and_batch, steps):
    # torchattacks.TPGD is an independent implementation of the same loop (nn.KLDivLoss, delta-space
    # projection), but it clips its 0.001 N(0, I) start into [0, 1], unlike the TRADES authors. So our
    # loop is given that clipped start explicitly. TPGD draws the noise from the global RNG; the same
    # seed gives the same draw here. Different float arithmetic flips the sign of near-zero gradients,
    # so the two are compared on what matters: the KL reached and the pixels left at 0.
    model, x, y = cnn_and_batch
    eps, alpha = 0.1, 0.1 / 4
    torch.manual_seed(11)
    want = torchattacks.TPGD(model, eps=eps, alpha=alpha, steps=steps)(x, y)
    torch.manual_seed(11)
    clipped = (x + 0.001 * torch.randn_like(x)).clamp(0, 1) - x
    got = kl_attack(model, x, AttackConfig(eps=eps, steps=steps, step_size=alpha, start="gaussian"), start=clipped)
    with torch.no_grad():
        kl_got, kl_want = _kl(model, x, got).sum().item(), _kl(model, x, want).sum().item()
    assert kl_got == pytest.approx(kl_want, rel=0.02)
    zeros = x == 0
    stuck_got, stuck_want = (got[zeros] == 0).float().mean().item(), (want[zeros] == 0).float().mean().item()
    assert stuck_got == pytest.approx(stuck_want, abs=0.01)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_matches_torchattacks(cnn_and_batch, norm):
    model, x, y = cnn_and_batch
    eps = 0.1 if norm == "linf" else 1.0
    alpha, steps = eps / 4, 10
    ref = (
        torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
        if norm == "linf"
        else torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
    )
    # torchattacks adds 1e-10 to the norm of the batch-mean loss's gradient; for confidently classified
    # samples that gradient is itself ~1e-9, which shortens their L2 steps. Make that guard negligible.
    ref.eps_for_division = 1e-30
    want = ref(x, y)
    got = pgd(model, x, y, AttackConfig(eps=eps, norm=norm, steps=steps, step_size=alpha, random_start=False))
    assert ((got - want).abs() <= 1e-5).float().mean() > 0.999
    with torch.no_grad():  # and it is as strong
        assert (model(got).argmax(1) == y).sum() == (model(want).argmax(1) == y).sum()


def test_each_method_starts_where_its_authors_start():
    # PGD-AT (Madry et al.), FGSM-RS (Wong et al.) and AWP's PGD-AT: uniform in the eps-ball;
    # TRADES (Zhang et al.) and MART (Wang et al.): x + 0.001 N(0, I).
    want = {
        "pgd_at": "uniform",
        "fgsm_rs": "uniform",
        "dp_pgd_at": "uniform",
        "trades": "gaussian",
        "dp_trades": "gaussian",
        "mart": "gaussian",
        "standard": "uniform",
        "dp_sgd": "uniform",
    }
    assert {n: METHODS.get(n).start for n in METHODS if METHODS.origin(n) == BUILTIN} == want
    dp = {"dp": {"noise_multiplier": 1.0}}
    for name, start in want.items():
        run = RunConfig.from_dict({"method": {"name": name}, **(dp if METHODS.get(name).dp else {})})
        assert run.attack.start == start, name
        assert run.eval.attack.start == "uniform"
    chosen = RunConfig.from_dict({"method": {"name": "mart"}, "attack": {"start": "uniform"}})
    assert chosen.attack.start == "uniform"
    with pytest.raises(ValueError, match=r"attack.start must be one of \('uniform', 'gaussian'\)"):
        RunConfig.from_dict({"attack": {"start": "normal"}})


@pytest.mark.parametrize("start", ["uniform", "gaussian"])
def test_start_distribution(start):
    # One step of negligible size leaves x_adv - x at the start; away from the box it is unclipped.
    # Kolmogorov-Smirnov against scipy's distribution: U(-eps, eps), or N(0, 0.001^2).
    eps = 0.05
    x = torch.full((64, 1, 8, 8), 0.5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    cfg = AttackConfig(eps=eps, steps=1, step_size=1e-12, start=start)
    delta = (
        (pgd(model, x, torch.zeros(64, dtype=torch.long), cfg, generator=torch.Generator().manual_seed(1)) - x)
        .flatten()
        .double()
        .numpy()
    )
    dist = stats.uniform(loc=-eps, scale=2 * eps) if start == "uniform" else stats.norm(scale=0.001)
    assert stats.kstest(delta, dist.cdf).pvalue > 1e-3
    other = stats.norm(scale=0.001) if start == "uniform" else stats.uniform(loc=-eps, scale=2 * eps)
    assert stats.kstest(delta, other.cdf).pvalue < 1e-6


def test_trades_attack_ignores_bf16_autocast(cnn_and_batch):
    # Training on CUDA runs under bf16 autocast. From the 0.001-noise start the KL's gradient is below
    # bf16's resolution, so a bf16 attack steps on rounding noise (10-15% less KL, measured). CPU
    # autocast has the same bf16 arithmetic, so the decision is testable here: under autocast the attack
    # must still be Algorithm 1 in fp32. PGD's CE gradient is large from the start and keeps bf16.
    model, x, y = cnn_and_batch
    eps, alpha, steps = 0.1, 0.025, 3
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    want = _authors_trades_attack(model, x, eps, alpha, steps, noise, kl="formula")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = generate(
            model,
            x,
            y,
            method=MethodConfig(name="trades"),
            attack=AttackConfig(eps=eps, steps=steps, step_size=alpha),
            generator=torch.Generator().manual_seed(3),
        )
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, rtol=0, atol=1e-6)
