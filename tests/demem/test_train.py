"""The training loop: exact resume, non-finite losses, schedules, on-device augmentation, configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from demem.artifacts import read_checkpoint, write_checkpoint
from demem.augment import augment, shift
from demem.config import to_dict
from demem.evaluate import evaluate_heldout, sample_statistics
from demem.privacy.signals import logit_scaled_confidence, logit_signals
from demem.train import RunConfig, TrainState, lr_at, prepare, train_epoch

from ..helpers import tiny_run


@pytest.fixture(scope="module")
def small_pool():
    from demem.data import make_pool

    return make_pool("fashion-mnist", pool_size=400, seed=1)


def _weights(state: TrainState) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.model.state_dict().items()}


@pytest.mark.parametrize("method", [{"name": "pgd_at", "awp_gamma": 0.01}, {"name": "trades"}])
def test_resume_gives_the_same_weights(tmp_path, small_pool, method):
    run = tiny_run(
        data={"pool_size": 400, "pool_seed": 1},
        train={"epochs": 3, "batch_size": 64},
        method=method,
        demem={"lambda": 0.4, "risk_threshold": 0.5},
    )
    straight = prepare(run, "cpu", pool=small_pool)
    for _ in range(3):
        train_epoch(straight)

    first = prepare(run, "cpu", pool=small_pool)
    train_epoch(first)
    write_checkpoint(first, tmp_path)
    del first
    resumed = prepare(run, "cpu", pool=small_pool)
    read_checkpoint(resumed, tmp_path)
    assert resumed.epoch == 1
    while not resumed.done:
        train_epoch(resumed)

    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path, small_pool):
    run = tiny_run(data={"pool_size": 400, "pool_seed": 1}, train={"epochs": 1})
    state = prepare(run, "cpu", pool=small_pool)
    write_checkpoint(state, tmp_path)
    other = prepare(
        tiny_run(data={"pool_size": 400, "pool_seed": 1}, train={"epochs": 1}, seed=5), "cpu", pool=small_pool
    )
    with pytest.raises(ValueError, match="different run config"):
        read_checkpoint(other, tmp_path)


def test_non_finite_loss_names_epoch_and_batch(small_pool):
    run = tiny_run(
        data={"pool_size": 400, "pool_seed": 1},
        train={"epochs": 2, "lr": 1e30, "batch_size": 32},
        method={"name": "standard"},
    )
    state = prepare(run, "cpu", pool=small_pool)
    with pytest.raises(FloatingPointError, match=r"epoch 1 batch \d+/7"):
        train_epoch(state)


def test_training_learns_and_reports_metrics(small_pool):
    run = tiny_run(
        data={"pool_size": 400, "pool_seed": 1},
        train={"epochs": 4, "batch_size": 32},
        method={"name": "standard"},
        demem={"lambda": 0.2},
    )
    state = prepare(run, "cpu", pool=small_pool)
    hist = [train_epoch(state) for _ in range(4)]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert all(h["penalty"] > 0 for h in hist)
    assert set(hist[0]) >= {"epoch", "train_loss", "penalty", "train_acc", "lr", "seconds"}
    ev = evaluate_heldout(state.model, state.pool, state.keep, run.eval, device=torch.device("cpu"))
    assert ev["n_heldout"] == 200
    assert 0.3 < ev["natural_acc"] <= 1 and 0 <= ev["robust_acc_pgd"] <= ev["natural_acc"]


def test_sample_statistics_cover_the_whole_pool(trained_standard):
    s = trained_standard
    stats = sample_statistics(s.model, s.pool, device=torch.device("cpu"), queries=2)
    assert stats["sample_id"].tolist() == s.pool.sample_ids.tolist()
    assert stats["label"].tolist() == s.pool.labels.tolist()
    for name in ("phi", "loss", "entropy", "mentropy", "correct"):
        assert stats[name].shape == (s.pool.n, 2), name
    assert np.isfinite(stats["phi"]).all()
    # Members (trained on) look more confident than non-members.
    assert stats["phi"][s.keep, 0].mean() > stats["phi"][~s.keep, 0].mean()
    assert stats["correct"][:, 0].mean() > 0.7
    # Query 1 is the horizontal flip: the same as querying flipped images.
    flipped = s.model(s.pool.images[:50].float().div(255).flip(3))
    np.testing.assert_allclose(
        stats["phi"][:50, 1], logit_scaled_confidence(flipped, s.pool.labels[:50]).detach(), rtol=1e-4, atol=1e-4
    )


def test_signals_match_naive_formulas():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (64,), generator=g)
    sig = logit_signals(logits, y)
    p = F.softmax(logits, 1)
    py = p[torch.arange(64), y]
    assert torch.allclose(sig["phi"], torch.log(py) - torch.log(1 - py))
    assert torch.allclose(sig["loss"], -torch.log(py))
    assert torch.allclose(sig["entropy"], -(p * torch.log(p)).sum(1))
    naive_m = -(1 - py) * torch.log(py) - sum(
        torch.where(y == j, torch.zeros_like(py), p[:, j] * torch.log(1 - p[:, j])) for j in range(10)
    )
    assert torch.allclose(sig["mentropy"], naive_m)
    assert torch.equal(sig["correct"], logits.argmax(1) == y)
    extreme = logit_signals(torch.tensor([[400.0, 0.0, 0.0], [0.0, 400.0, 0.0]]), torch.tensor([0, 0]))
    assert all(torch.isfinite(v.double()).all() for v in extreme.values())


def test_logit_scaled_confidence_is_stable_and_exact():
    logits = torch.tensor([[2.0, 0.5, -1.0], [200.0, 0.0, 0.0], [-50.0, 50.0, 0.0]])
    y = torch.tensor([0, 0, 0])
    phi = logit_scaled_confidence(logits, y)
    p = F.softmax(logits.double(), 1)[:, 0]
    assert phi[0].item() == pytest.approx((torch.log(p[0]) - torch.log1p(-p[0])).item(), rel=1e-6)
    assert torch.isfinite(phi).all()
    assert phi[1].item() == pytest.approx(200.0 - np.log(2.0), rel=1e-6)  # naive formula gives inf
    assert phi[2].item() == pytest.approx(-100.0, rel=1e-4)


def test_step_and_cosine_schedules():
    run = tiny_run(train={"epochs": 100, "lr": 0.1})
    assert lr_at(run.train, 0) == 0.1 and lr_at(run.train, 74) == 0.1
    assert lr_at(run.train, 75) == pytest.approx(0.01)
    cos = tiny_run(train={"epochs": 10, "schedule": "cosine"}).train
    assert lr_at(cos, 0) == pytest.approx(cos.lr) and lr_at(cos, 5) == pytest.approx(cos.lr / 2)


def test_shift_matches_pad_and_crop_oracle():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8, generator=g)
    dy = torch.tensor([-2, -1, 0, 1, 2, 0])
    dx = torch.tensor([0, 2, -2, 1, -1, 0])
    got = shift(x, dy, dx, 2)
    for i in range(6):
        padded = F.pad(x[i], (2, 2, 2, 2))
        want = padded[:, 2 + dy[i] : 2 + dy[i] + 8, 2 + dx[i] : 2 + dx[i] + 8]
        assert torch.equal(got[i], want)
    mirrored = shift(x, dy, dx, 2, flip=torch.tensor([True, False, True, False, True, True]))
    for i in range(6):
        plain = got[i].flip(2) if i in (0, 2, 4, 5) else got[i]
        assert torch.equal(mirrored[i], plain)


def test_augment_is_reproducible_and_flips_only_when_allowed():
    x = torch.rand(64, 1, 28, 28)
    a = augment(x, crop_pad=0, flip=True, generator=torch.Generator().manual_seed(1))
    b = augment(x, crop_pad=0, flip=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    flipped = [(not torch.equal(a[i], x[i])) and torch.equal(a[i], x[i].flip(2)) for i in range(64)]
    assert 10 < sum(flipped) < 54
    assert torch.equal(augment(x, crop_pad=0, flip=False), x)


def test_run_config_defaults_round_trip_and_errors():
    run = RunConfig.from_dict({"data": {"dataset": "cifar10"}})
    assert run.attack.eps == pytest.approx(8 / 255) and run.train.epochs == 100
    assert run.attack.step_size == pytest.approx(1.25 * run.attack.eps / 3)
    assert run.eval.attack.steps == 20 and run.eval.attack.alpha == pytest.approx(1 / 255)
    assert RunConfig.from_dict(run.to_dict()) == run
    fm = RunConfig.from_dict({})
    assert fm.attack.eps == pytest.approx(0.1) and fm.data.dataset == "fashion-mnist"
    assert to_dict(fm.demem)["lambda"] == 0.0
    with pytest.raises(ValueError, match=r"unknown key 'demem.lamda'.*lambda"):
        RunConfig.from_dict({"demem": {"lamda": 0.2}})
    known = "dp_pgd_at, dp_sgd, dp_trades, fgsm_rs, mart, pgd_at, "  # then any installed plugin's, and ours
    with pytest.raises(ValueError, match=f"unknown method 'madry'; known: {known}"):
        RunConfig.from_dict({"method": {"name": "madry"}})
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        RunConfig.from_dict({"data": {"dataset": "imagenet"}})
    with pytest.raises(ValueError, match="model_index"):
        RunConfig.from_dict({"n_models": 4, "model_index": 4})
    with pytest.raises(ValueError, match="AWP"):
        RunConfig.from_dict({"method": {"name": "mart", "awp_gamma": 0.01}})


def test_group_models_split_the_pool_between_them(small_pool):
    run0 = tiny_run(data={"pool_size": 400, "pool_seed": 1}, n_models=2, model_index=0)
    run1 = tiny_run(data={"pool_size": 400, "pool_seed": 1}, n_models=2, model_index=1)
    k0 = prepare(run0, "cpu", pool=small_pool).keep
    k1 = prepare(run1, "cpu", pool=small_pool).keep
    assert k0.sum() == k1.sum() == 200 and not (k0 & k1).any()


def test_memorization_risk_from_a_file(tmp_path, small_pool):
    ids = small_pool.sample_ids.numpy()
    mem = np.linspace(0, 1, len(ids)).astype(np.float32)
    np.savez(tmp_path / "risk.npz", sample_id=ids, memorization=mem)
    run = tiny_run(
        data={"pool_size": 400, "pool_seed": 1},
        train={"epochs": 1, "batch_size": 50},
        method={"name": "standard"},
        demem={
            "lambda": 0.5,
            "risk": "memorization",
            "risk_file": str(tmp_path / "risk.npz"),
            "risk_threshold": 0.5,
            "threshold_mode": "absolute",
        },
    )
    state = prepare(run, "cpu", pool=small_pool)
    assert torch.allclose(state.train_mem.cpu(), torch.from_numpy(mem[state.keep]))
    m = train_epoch(state)
    expected = float((mem[state.keep] >= 0.5).mean())
    assert m["high_risk_frac"] == pytest.approx(expected, abs=1e-9)

    np.savez(tmp_path / "partial.npz", sample_id=ids[:100], memorization=mem[:100])
    bad = tiny_run(
        data={"pool_size": 400, "pool_seed": 1},
        demem={"lambda": 0.5, "risk": "memorization", "risk_file": str(tmp_path / "partial.npz")},
    )
    with pytest.raises(ValueError, match="no score for"):
        prepare(bad, "cpu", pool=small_pool)


def test_awp_perturbs_each_layer_by_gamma_and_restores_exactly(small_pool):
    from demem.methods import AWP, MethodConfig, objective

    run = tiny_run(data={"pool_size": 400, "pool_seed": 1})
    state = prepare(run, "cpu", pool=small_pool)
    model = state.model
    before = {k: v.clone() for k, v in model.named_parameters()}
    x = state.train_x[:32].float() / 255
    y = state.train_y[:32]
    awp = AWP(model, gamma=0.01)
    method = MethodConfig(name="pgd_at")
    deltas = awp.perturb(model, lambda m: objective(m, x, y, x, method=method, demem=run.demem).total)
    changed = 0
    for name, p in model.named_parameters():
        diff = (p - before[name]).norm()
        if p.dim() > 1:
            assert diff.item() == pytest.approx(0.01 * before[name].norm().item(), rel=1e-4)
            changed += 1
        else:
            assert diff.item() == 0  # biases and norm parameters are left alone
    assert changed >= 4 and len(deltas) == changed
    awp.restore(model, deltas)
    for name, p in model.named_parameters():
        assert torch.allclose(p, before[name], atol=1e-7)


@pytest.mark.parametrize("kind", ["method", "total"])
def test_awp_ascends_the_methods_loss_unless_asked(small_pool, monkeypatch, kind):
    # The AWP and DeMem reference code perturb the weights along the method's loss alone (here PGD-AT:
    # mean CE on the adversarial examples); "total" adds lambda * Var(CE). Reference values are
    # computed here from those formulas, on the batch the training loop really used.
    import demem.train as train_mod
    from demem.methods import AWP

    lam = 0.4
    run = tiny_run(
        data={"pool_size": 400, "pool_seed": 1},
        train={"epochs": 1, "batch_size": 64},
        method={"name": "pgd_at", "awp_gamma": 0.01, "awp_objective": kind},
        demem={"lambda": lam},
    )
    state = prepare(run, "cpu", pool=small_pool)
    batches, seen = [], []
    real_generate, real_perturb = train_mod.generate, AWP.perturb

    def spy_generate(model, x, y, **kw):
        x_adv = real_generate(model, x, y, **kw)
        batches.append((x, y, x_adv))
        return x_adv

    def spy_perturb(self, model, loss_fn):
        x, y, x_adv = batches[-1]
        with torch.no_grad():  # BatchNorm in train mode: batch statistics, as inside the proxy
            ce = F.cross_entropy(model(x_adv), y, reduction="none")
            seen.append((loss_fn(model).item(), ce.mean().item(), (ce.mean() + lam * ce.var()).item()))
        return real_perturb(self, model, loss_fn)

    monkeypatch.setattr(train_mod, "generate", spy_generate)
    monkeypatch.setattr(AWP, "perturb", spy_perturb)
    train_epoch(state)
    assert len(seen) == len(batches) >= 3
    for got, method_loss, total in seen:
        assert total > method_loss + 1e-4  # the two objectives really differ on these batches
        assert got == pytest.approx(method_loss if kind == "method" else total, rel=1e-5)


def test_awp_objective_is_checked():
    assert RunConfig.from_dict({"method": {"name": "trades", "awp_gamma": 0.005}}).method.awp_objective == "method"
    with pytest.raises(ValueError, match=r"method.awp_objective must be one of \('method', 'total'\)"):
        RunConfig.from_dict({"method": {"name": "pgd_at", "awp_gamma": 0.01, "awp_objective": "penalty"}})
