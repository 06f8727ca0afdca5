"""Attacks: norm-ball and box invariants, mode handling, and that they really hurt a trained model."""

from __future__ import annotations

import sys

import pytest
import torch

from demem.evaluate import accuracy
from demem.evasion import AttackConfig, attack_loss, fgsm, pgd, run_attack


def _batch(state, n=200):
    x = state.pool.images[:n].float() / 255
    y = state.pool.labels[:n]
    return x, y


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
@pytest.mark.parametrize("loss", ["ce", "cw"])
@pytest.mark.parametrize("name", ["pgd", "fgsm"])
def test_perturbation_stays_in_ball_and_box(trained_standard, norm, eps, loss, name):
    model = trained_standard.model
    x, y = _batch(trained_standard, 64)
    cfg = AttackConfig(name=name, eps=eps, norm=norm, steps=5, loss=loss)
    g = torch.Generator().manual_seed(0)
    x_adv = run_attack(model, x, y, cfg, generator=g)
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (size > 0.5 * eps).float().mean() > 0.5  # it actually moved


def test_attack_restores_model_mode(trained_standard):
    model = trained_standard.model
    x, y = _batch(trained_standard, 8)
    for mode in (True, False):
        model.train(mode)
        seen = []
        hook = model.register_forward_pre_hook(lambda m, inp: seen.append(m.training))
        try:
            pgd(model, x, y, AttackConfig(eps=0.1, steps=2))
        finally:
            hook.remove()
        assert seen and not any(seen), "the attack must run the model in eval mode"
        assert model.training is mode
    model.eval()


def test_pgd_lowers_accuracy_of_undefended_model(trained_standard):
    s = trained_standard
    x, y = s.pool.images[:500], s.pool.labels[:500]
    clean = accuracy(s.model, x, y, device=torch.device("cpu"))
    robust = accuracy(
        s.model,
        x,
        y,
        device=torch.device("cpu"),
        attack=AttackConfig(eps=0.1, steps=10, keep_best=True),
        generator=torch.Generator().manual_seed(0),
    )
    fast = accuracy(s.model, x, y, device=torch.device("cpu"), attack=AttackConfig(name="fgsm", eps=0.1))
    assert clean > 0.7
    assert robust < 0.1
    assert robust <= fast < clean


def test_more_steps_never_help_the_model(trained_standard):
    s = trained_standard
    x, y = s.pool.images[:400], s.pool.labels[:400]
    accs = []
    for steps in (1, 3, 10):
        # Same step size and the same random start: the first iterates coincide exactly.
        cfg = AttackConfig(eps=0.03, steps=steps, step_size=0.01, keep_best=True)
        accs.append(
            accuracy(s.model, x, y, device=torch.device("cpu"), attack=cfg, generator=torch.Generator().manual_seed(7))
        )
    assert accs[0] >= accs[1] >= accs[2]
    assert accs[0] - accs[2] > 0.05  # and the extra steps find real adversarial examples


def test_cw_loss_is_margin():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]])
    y = torch.tensor([0, 2])
    assert torch.allclose(attack_loss(logits, y, "cw"), torch.tensor([2.0 - 3.0, 5.0 - (-1.0)]))


def test_fgsm_is_single_signed_step(trained_standard):
    model = trained_standard.model
    x, y = _batch(trained_standard, 16)
    x = x.clamp(0.2, 0.8)  # away from the box so no coordinate is clipped
    x_adv = fgsm(model, x, y, AttackConfig(name="fgsm", eps=0.05))
    assert torch.allclose((x_adv - x).abs().flatten(1).amax(1), torch.full((16,), 0.05), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"eps": 0}, "eps"),
        ({"eps": -0.1}, "eps"),
        ({"steps": 0}, "steps"),
        ({"norm": "l1"}, "norm"),
        ({"loss": "dlr"}, "loss"),
        ({"name": "cw-l2"}, "unknown attack"),
    ],
)
def test_bad_attack_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttackConfig(**kwargs)


def test_autoattack_without_extra_says_how_to_install(trained_standard, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # import now raises ImportError
    x, y = _batch(trained_standard, 4)
    with pytest.raises(ImportError, match=r"demem\[autoattack\]"):
        run_attack(trained_standard.model, x, y, AttackConfig(name="autoattack", eps=0.1))
