"""The example plugin's own tests: demem's conformance checks (what every plugin author runs), and
each entry against an independent reference: RelaxLoss against a step written the way the authors'
code writes it (DingfanChen/RelaxLoss, defense/relaxloss.py: a Python branch on the batch loss,
one-hot soft targets, their soft cross-entropy), the calibrated attack against a per-sample loop of
Watson et al.'s definition, LeNet-5's size against the paper's count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from demem_example_plugin.calibrated import calibrated_scores
from demem_example_plugin.relaxloss import UPPER

from demem import testing
from demem.methods import METHODS, MethodConfig
from demem.models import MODELS, build_model, count_parameters
from demem.privacy.attacks import MIA


@pytest.mark.parametrize("name", ["relaxloss", "relaxloss_at"])
def test_the_methods_pass_demems_conformance_check(name):
    skipped = testing.check_method(name)
    assert all("AWP" in s or "DP" in s or "clean batch" in s for s in skipped)


def test_the_model_and_the_attack_pass_demems_conformance_checks():
    assert testing.check_model("lenet5") == []
    assert testing.check_attack("calibrated_loss") == []


def test_entries_come_from_this_distribution():
    for registry, name in (
        (METHODS, "relaxloss"),
        (METHODS, "relaxloss_at"),
        (MODELS, "lenet5"),
        (MIA, "calibrated_loss"),
    ):
        assert registry.origin(name).startswith("plugin demem-example-plugin ")


def _authors_step(outputs: torch.Tensor, targets: torch.Tensor, alpha: float, epoch: int) -> torch.Tensor:
    """Their training loss, in their order (cross-entropy modules, a Python if on the batch loss)."""
    num_classes = outputs.shape[1]
    loss_ce_full = torch.nn.CrossEntropyLoss(reduction="none")(outputs, targets)
    loss_ce = torch.mean(loss_ce_full)
    if epoch % 2 == 0:
        return (loss_ce - alpha).abs()
    if loss_ce > alpha:
        return loss_ce
    pred = torch.argmax(outputs, dim=1)
    correct = torch.eq(pred, targets).float()
    confidence_target = torch.nn.Softmax(dim=1)(outputs)[torch.arange(targets.size(0)), targets]
    confidence_target = torch.clamp(confidence_target, min=0.0, max=UPPER)
    confidence_else = (1.0 - confidence_target) / (num_classes - 1)
    onehot = torch.eye(num_classes)[targets]
    soft_targets = onehot * confidence_target.unsqueeze(-1).repeat(1, num_classes) + (1 - onehot) * (
        confidence_else.unsqueeze(-1).repeat(1, num_classes)
    )
    soft_ce = -(soft_targets * F.log_softmax(outputs, dim=1)).sum(-1)
    return torch.mean((1 - correct) * soft_ce - 1.0 * loss_ce_full)


@pytest.mark.parametrize("epoch", [0, 1, 2, 3])
@pytest.mark.parametrize("alpha", [0.05, 1.0, 5.0, 10.0])  # below and above the batch loss
def test_relaxloss_equals_the_authors_step_value_and_gradient(epoch, alpha):
    torch.manual_seed(epoch)
    model = build_model("lenet5", in_channels=1, num_classes=10, image_size=28, mean=(0.5,), std=(0.25,))
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    # sharpen the logits so some samples are classified correctly (the flattening branch needs them)
    with torch.no_grad():
        model.net[-1].weight.mul_(20)
    cfg = MethodConfig(name="relaxloss", beta=alpha)
    out = METHODS.get("relaxloss").loss(model, x, None, y, cfg, epoch=epoch)
    out.loss.backward()
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = _authors_step(model(x), y, alpha, epoch)
    ref.backward()
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.per_sample, F.cross_entropy(model(x), y, reduction="none"))


def test_relaxloss_at_trains_on_pgd_examples():
    from demem.evasion import AttackConfig
    from demem.methods import generate

    torch.manual_seed(0)
    model = build_model("lenet5", in_channels=1, num_classes=10, image_size=28, mean=(0.5,), std=(0.25,))
    model.eval()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    attack = AttackConfig(eps=0.1, steps=3, step_size=0.05, start="uniform")
    g = torch.Generator().manual_seed(1)
    x_adv = generate(model, x, y, method=MethodConfig(name="relaxloss_at"), attack=attack, generator=g)
    assert x_adv is not None and 0 < float((x_adv - x).abs().max()) <= 0.1 + 1e-6
    assert generate(model, x, y, method=MethodConfig(name="relaxloss"), attack=attack) is None
    assert METHODS.get("relaxloss_at").undefended == "pgd_at" and METHODS.get("relaxloss").undefended == "standard"


def test_calibrated_scores_equal_a_loop_over_samples():
    rng = np.random.default_rng(0)
    m, n = 6, 40
    keep = np.zeros((m, n), bool)
    for p in range(m // 2):
        keep[2 * p, rng.permutation(n)[: n // 2]] = True
        keep[2 * p + 1] = ~keep[2 * p]
    loss = rng.exponential(1.0, (m, n))
    targets, partners = np.arange(m), np.arange(m) ^ 1
    got = calibrated_scores(loss, keep, targets, partners)
    for t in targets:
        for i in range(n):
            refs = [r for r in range(m) if r not in (t, t ^ 1) and not keep[r, i]]
            assert got[t, i] == pytest.approx(-(loss[t, i] - np.mean([loss[r, i] for r in refs])))


def test_lenet5_has_the_papers_parameter_count():
    model = build_model("lenet5", in_channels=1, num_classes=10, image_size=28, mean=(0.5,), std=(0.25,))
    norm = sum(p.numel() for mod in model.modules() if isinstance(mod, torch.nn.BatchNorm2d) for p in mod.parameters())
    # conv 1->6 (5x5) 156, conv 6->16 2,416, fc 400->120 48,120, 120->84 10,164, 84->10 850
    assert count_parameters(model) - norm == 61_706


def test_demem_on_top_of_relaxloss_trains(tmp_path):
    """DeMem's penalty on the plugin method's per-sample losses, through demem's own training run."""
    from pathlib import Path

    from demem.runner import train_run
    from demem.train import RunConfig

    if not (Path("/usr/share/datasets/fashion-mnist") / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    run = RunConfig.from_dict(
        {
            "data": {"dataset": "fashion-mnist", "pool_size": 64},
            "train": {"arch": "lenet5", "epochs": 2, "batch_size": 16},
            "method": {"name": "relaxloss_at", "beta": 1.5},
            "attack": {"steps": 1},
            "demem": {"lambda": 0.4},
            "eval": {"attack": {"steps": 1}, "adversarial": None, "boundary": None},
        }
    )
    assert run.defence == "relaxloss_at+demem"
    metrics = train_run(run, tmp_path / "run", "cpu", log=lambda _: None)
    assert all(epoch["penalty"] > 0 for epoch in metrics["history"]) and metrics["defence"] == "relaxloss_at+demem"
