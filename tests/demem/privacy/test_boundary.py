"""The boundary-distance signal: against the closed-form distance of a linear model in both norms, the
misclassified and beyond-the-cap edge cases, determinism across calls and batch compositions, the
pool-level keys, shapes and dtypes, the config's validation, the default caps and the log statistic."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from demem.privacy.boundary import BoundaryConfig, boundary_distance, log_distance, pool_boundary, radius_caps

C, S, K = 1, 8, 3  # 1x8x8 images, 3 classes
D = C * S * S


def linear_model(seed: int = 0, offsets: tuple[float, ...] = (8.0, 0.0, 0.0)) -> nn.Module:
    """f(x) = W x_flat + b with W ~ N(0, 1) and b chosen so that z = W (x - 0.5) + offsets: near x = 0.5
    class 0 wins by margins of about 8, i.e. L-inf distances ~0.1 and L2 distances ~0.7."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(D, K)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(K, D, generator=g))
        lin.bias.copy_(-0.5 * lin.weight.sum(1) + torch.tensor(offsets))
    return nn.Sequential(nn.Flatten(), lin)


def images(b: int, seed: int = 1, spread: float = 0.3) -> torch.Tensor:
    """(b, 1, 8, 8) pixels uniform in 0.5 +- spread / 2."""
    g = torch.Generator().manual_seed(seed)
    return 0.5 + spread * (torch.rand(b, C, S, S, generator=g) - 0.5)


def closed_form(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str) -> dict[str, torch.Tensor]:
    """Minimal distance of each x to the linear model's decision boundary, ignoring the box:
    min_{j != y} (z_y - z_j) / ||w_y - w_j||_dual (dual of L-inf: L1; of L2: L2), float64; the rival j
    that attains it; the optimal perturbation; and the rival with the largest logit at x."""
    lin = model[1]
    w, b = lin.weight.detach().double(), lin.bias.detach().double()
    xf = x.flatten(1).double()
    z = xf @ w.T + b
    wd = w[y][:, None, :] - w[None, :, :]  # (B, K, D): w_y - w_j
    margins = z.gather(1, y[:, None]) - z
    dual = wd.abs().sum(-1) if norm == "linf" else wd.norm(dim=-1)
    dist = (margins / dual).masked_fill(nn.functional.one_hot(y, K).bool(), math.inf)
    d, j = dist.min(1)
    wj = wd[torch.arange(len(y)), j]
    step = -wj.sign() if norm == "linf" else -wj / wj.norm(dim=1, keepdim=True)
    rival = z.masked_fill(nn.functional.one_hot(y, K).bool(), -math.inf).argmax(1)
    return {"d": d, "nearest": j, "delta": d[:, None] * step, "largest": rival}


@pytest.mark.parametrize("norm, r_max, tol", [("linf", 0.3, 1e-6), ("l2", 2.0, 2e-5)])
def test_agrees_with_the_closed_form_of_a_linear_model(norm, r_max, tol):
    model = linear_model()
    x = images(64)
    with torch.no_grad():
        y = model(x).argmax(1)
    ref = closed_form(model, x, y, norm)
    # The box [0, 1] does not bind at the optimum, so the closed form ignores it rightly.
    opt = x.flatten(1).double() + ref["delta"]
    assert bool(((opt >= 0) & (opt <= 1)).all()) and float(ref["d"].max()) < r_max
    d, censored = boundary_distance(model, x, y, norm=norm, r_max=r_max, bisections=5, steps=5)
    assert d.dtype == torch.float64 and d.shape == (64,) and not censored.any()
    # Where the nearest boundary is that of the rival with the largest logit at x, PGD on the CW
    # margin walks straight along the optimal direction, and the margin interpolation makes the
    # bisection exact: the residual is float32 rounding of the logits and the perturbation.
    easy = ref["nearest"] == ref["largest"]
    assert int(easy.sum()) >= 16
    assert torch.allclose(d[easy], ref["d"][easy], rtol=tol, atol=0)
    # Anywhere, an attack cannot beat the optimum: the estimate never falls below the true distance.
    assert bool((d >= ref["d"] * (1 - tol)).all())


def test_misclassified_is_zero_and_beyond_the_cap_is_censored():
    model = linear_model()
    x = images(6)
    with torch.no_grad():
        pred = model(x).argmax(1)
    ref = closed_form(model, x, pred, "linf")["d"]
    assert bool((ref > 0.05).all())
    y = pred.clone()
    y[:3] = (pred[:3] + 1) % K  # misclassified: distance 0, not censored
    d, censored = boundary_distance(model, x, y, norm="linf", r_max=0.05, bisections=3, steps=5)
    assert torch.equal(d[:3], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(censored, torch.tensor([False] * 3 + [True] * 3))
    # Beyond r_max: extrapolated along the margin, which for a linear model is the distance to the
    # boundary of the rival PGD followed (its closed form), clipped at 4 r_max.
    assert bool((d[3:] >= 0.05).all() and (d[3:] <= 0.2).all())
    full = closed_form(model, x, pred, "linf")
    easy = (full["nearest"] == full["largest"])[3:] & (ref[3:] < 0.2)
    assert int(easy.sum()) >= 1
    assert torch.allclose(d[3:][easy], ref[3:][easy], rtol=1e-5, atol=0)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(C, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, K),
    )


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_deterministic_and_independent_of_the_batch(norm):
    model = small_cnn()
    model.train()  # boundary_distance must switch to eval mode and back
    x = torch.rand(8, C, S, S, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    model.train()
    kw = {"norm": norm, "r_max": 1.0 if norm == "linf" else 4.0, "bisections": 5, "steps": 5}
    d1, c1 = boundary_distance(model, x, y, **kw)
    assert model.training
    d2, c2 = boundary_distance(model, x, y, **kw)
    assert torch.equal(d1, d2) and torch.equal(c1, c2)  # bit-identical
    assert bool((d1 > 0).all()) and len(set(d1.tolist())) == len(d1)  # continuous: no ties
    singles = [boundary_distance(model, x[i : i + 1], y[i : i + 1], **kw) for i in range(len(x))]
    d_single = torch.cat([d for d, _ in singles])
    assert torch.equal(torch.cat([c for _, c in singles]), c1)
    assert torch.allclose(d_single, d1, rtol=1e-5, atol=1e-7)
    # Reordering the batch reorders the results.
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(4))
    d_perm, _ = boundary_distance(model, x[perm], y[perm], **kw)
    assert torch.allclose(d_perm, d1[perm], rtol=1e-5, atol=1e-7)


def test_pool_boundary_keys_shapes_dtypes():
    n = 13
    g = torch.Generator().manual_seed(5)
    imgs = torch.randint(0, 256, (n, C, S, S), dtype=torch.uint8, generator=g)
    model = small_cnn()
    with torch.no_grad():
        labels = model.eval()(imgs.float() / 255).argmax(1)
    labels[0] = (labels[0] + 1) % K  # one misclassified sample
    pool = SimpleNamespace(
        images=imgs, labels=labels, sample_ids=torch.arange(n) * 2, n=n, info=SimpleNamespace(eps=0.1)
    )
    cfg = BoundaryConfig(bisections=2, steps=2, batch_size=5)
    out = pool_boundary(model, pool, cfg, eps_linf=0.1, device=torch.device("cpu"))
    assert set(out) == {
        "boundary_linf",
        "boundary_linf_censored",
        "boundary_l2",
        "boundary_l2_censored",
        "boundary_seconds",
    }
    caps = radius_caps(cfg, 0.1, D)
    for norm in ("linf", "l2"):
        d, c = out[f"boundary_{norm}"], out[f"boundary_{norm}_censored"]
        assert d.shape == (n,) and d.dtype == np.float32 and c.shape == (n,) and c.dtype == np.bool_
        assert d[0] == 0 and not c[0]
        cap = np.float32(caps[norm])
        assert bool(((d >= 0) & (d <= 4 * cap)).all())
        assert bool((d[~c] <= cap).all() and (d[c] >= cap).all())  # censored: extrapolated past the cap
        # In pool order and batched by cfg.batch_size: the same as one call on the whole pool.
        ref, ref_c = boundary_distance(
            model, imgs.float() / 255, labels, norm=norm, r_max=caps[norm], bisections=2, steps=2
        )
        np.testing.assert_allclose(d, ref.numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(c, ref_c.numpy())
    seconds = np.asarray(out["boundary_seconds"])
    assert seconds.shape == () and seconds.dtype == np.float64 and float(seconds) > 0
    only = pool_boundary(model, pool, BoundaryConfig(norms=("l2",), l2_max=1.5, bisections=1, steps=1),
                         eps_linf=0.1, device=torch.device("cpu"))  # fmt: skip
    assert set(only) == {"boundary_l2", "boundary_l2_censored", "boundary_seconds"}
    d, c = only["boundary_l2"], only["boundary_l2_censored"]
    assert float(d[~c].max()) <= 1.5 and float(d.max()) <= 4 * 1.5  # the cap given, not the default


def test_radius_caps_defaults_and_overrides():
    cfg = BoundaryConfig()
    assert radius_caps(cfg, 0.1, 784) == pytest.approx({"linf": 0.4, "l2": 5.6})
    assert radius_caps(cfg, 8 / 255, 3072) == pytest.approx({"linf": 32 / 255, "l2": 16 / 255 * math.sqrt(3072)})
    assert radius_caps(BoundaryConfig(norms=("l2",), l2_max=1.0, linf_max=0.2), 0.1, 784) == {"l2": 1.0}
    with pytest.raises(ValueError):
        radius_caps(cfg, 0.0, 784)


@pytest.mark.parametrize(
    "kw",
    [
        {"norms": ()},
        {"norms": ("linf", "linf")},
        {"norms": ("l1",)},
        {"bisections": 0},
        {"steps": 0},
        {"batch_size": 0},
        {"steps": 2.0},
        {"steps": True},
        {"linf_max": 0.0},
        {"l2_max": -1.0},
        {"l2_max": math.inf},
    ],
)
def test_config_rejects_bad_values(kw):
    with pytest.raises(ValueError):
        BoundaryConfig(**kw)


def test_log_distance_floors_zero():
    d = np.array([0.0, 1e-5, 0.01, 0.4], dtype=np.float32)
    out = log_distance(d, 0.4)
    assert out.dtype == np.float64 and np.isfinite(out).all()
    np.testing.assert_allclose(out, np.log([4e-4, 4e-4, 0.01, 0.4]), rtol=1e-6)
