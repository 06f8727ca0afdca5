"""The built-ins pass the same conformance checks a plugin author runs (`demem.testing`): every
method, every architecture (the two wide ResNets take about 10 s), every membership attack and
the embedded default dataset. A check that a built-in failed would be a contract the house breaks."""

from __future__ import annotations

import pytest

from demem import testing
from demem.methods import METHODS
from demem.models import MODELS
from demem.privacy.attacks import MIA
from demem.registry import BUILTIN
from tests.helpers import FASHION_DIR, needs_fashion

BUILTIN_METHODS = [n for n in METHODS.registered() if METHODS.origin(n) == BUILTIN]
BUILTIN_ATTACKS = [n for n in MIA.registered() if MIA.origin(n) == BUILTIN]


@pytest.mark.parametrize("name", BUILTIN_METHODS)
def test_every_builtin_method_meets_the_method_contract(name):
    skipped = testing.check_method(name)
    entry = METHODS.get(name)
    # what may be skipped is what the method states it does not do
    assert any("AWP" in s for s in skipped) != entry.supports_awp
    assert any(s.startswith("DP") for s in skipped) != entry.dp
    assert any("edge pixels" in s for s in skipped) == (name in ("trades", "dp_trades"))  # the KL attack


@pytest.mark.parametrize("name", [n for n in MODELS.registered() if MODELS.origin(n) == BUILTIN])
def test_every_builtin_model_meets_the_model_contract(name):
    assert testing.check_model(name) == []


@pytest.mark.parametrize("name", BUILTIN_ATTACKS)
def test_every_builtin_attack_meets_the_attack_contract(name):
    skipped = testing.check_attack(name)
    assert any("own keep row" in s for s in skipped) == (MIA.get(name).family == "rmia")


@needs_fashion
def test_the_default_dataset_meets_the_dataset_contract():
    assert testing.check_dataset("fashion-mnist", FASHION_DIR) == []


def _clamped_pgd(model, x, y, attack, cfg, generator=None):
    """PGD written the wrong way: the perturbation is the variable and the clamp sits in the graph."""
    import torch
    import torch.nn.functional as F

    delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * attack.eps
    for _ in range(attack.steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + attack.alpha * grad.sign()).clamp(-attack.eps, attack.eps)
    return (x + delta).clamp(0, 1).detach()


def test_the_method_check_catches_a_clamp_inside_the_attacks_graph(monkeypatch):
    from dataclasses import replace

    broken = replace(METHODS.get("pgd_at"), generate=_clamped_pgd)
    monkeypatch.setitem(METHODS._items, "pgd_at", broken)
    with pytest.raises(testing.ConformanceError, match="did not move"):
        testing.check_method("pgd_at")
