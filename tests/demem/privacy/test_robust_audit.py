"""The audit that sees robustness: attacks on adversarial queries and boundary distances, against
references written from the papers (a per-sample LiRA loop with scipy's Gaussians), on null groups
(models that learned nothing), and on models that did learn; the adversarial queries' fixed starts; and
the training-half accuracies behind the robust generalization gap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from demem.artifacts import load_group, read_checkpoint, read_json_file
from demem.evasion import AttackConfig
from demem.privacy import audit
from demem.privacy.attacks import MIA
from demem.privacy.signals import adversarial_signals, sample_starts
from demem.runner import attack_batch
from demem.testing import synthetic_group
from demem.train import RunConfig, load_pool, prepare
from tests.helpers import ROBUST_SIGNALS, needs_fashion, train_group

pytestmark = needs_fashion


def _lira_reference(x: np.ndarray, keep: np.ndarray, t: int, variant: str) -> np.ndarray:
    """LiRA of target t on one signal per (model, sample), one sample at a time (Carlini et al. 2022):
    shadows are every model but t and its complementary partner t ^ 1; Gaussians of the IN and OUT
    shadows' signals (population std, floored at 1e-6); the fixed variants replace each std by the
    median over samples of the per-sample ones."""
    m, n = x.shape
    shadows = [j for j in range(m) if j not in (t, t ^ 1)]
    mu_in, sd_in, mu_out, sd_out = (np.empty(n) for _ in range(4))
    for i in range(n):
        ins = [x[j, i] for j in shadows if keep[j, i]]
        outs = [x[j, i] for j in shadows if not keep[j, i]]
        mu_in[i], sd_in[i] = np.mean(ins), max(np.std(ins), 1e-6)
        mu_out[i], sd_out[i] = np.mean(outs), max(np.std(outs), 1e-6)
    if variant.endswith("_fixed"):
        sd_in[:], sd_out[:] = np.median(sd_in), np.median(sd_out)
    out = np.empty(n)
    for i in range(n):
        if variant.startswith("online"):
            out[i] = stats.norm.logpdf(x[t, i], mu_in[i], sd_in[i]) - stats.norm.logpdf(x[t, i], mu_out[i], sd_out[i])
        else:
            out[i] = stats.norm.logcdf(x[t, i], mu_out[i], sd_out[i])
    return out


def test_adversarial_query_lira_equals_a_per_sample_reference_on_fixed_signals():
    group = synthetic_group(8, n=40)
    setup = audit.attack_setup(group, audit.AuditConfig())
    x = group.signals["adv_phi"][:, :, 0].astype(np.float64)
    for variant in ("online", "online_fixed", "offline", "offline_fixed"):
        got = MIA.get(f"lira_{variant}_adv").score(setup).scores
        for t in range(8):
            np.testing.assert_allclose(got[t], _lira_reference(x, group.keep, t, variant), rtol=1e-9, atol=1e-9)
    # And the boundary LiRA: the online fixed-variance test on the floored log-distance.
    cap = group.run["eval"]["boundary"]["linf_max"]
    logd = np.log(np.maximum(group.signals["boundary_linf"][:, :, 0], cap * 1e-3))
    got = MIA.get("lira_boundary_linf").score(setup).scores
    for t in range(8):
        np.testing.assert_allclose(got[t], _lira_reference(logd, group.keep, t, "online_fixed"), rtol=1e-9, atol=1e-9)


def test_each_sample_starts_from_its_own_seed_whatever_the_batch():
    cfg = AttackConfig(eps=0.1, steps=3)
    x = torch.rand(6, 1, 8, 8)
    ids = torch.tensor([5, 17, 3, 99, 42, 7])
    whole = sample_starts(x, ids, cfg)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    np.testing.assert_array_equal(sample_starts(x[perm], ids[perm], cfg).numpy(), whole[perm].numpy())
    np.testing.assert_array_equal(sample_starts(x[2:3], ids[2:3], cfg).numpy(), whole[2:3].numpy())
    assert whole.abs().max() <= 0.1 + 1e-7 and whole.std() > 0.03  # uniform in the eps-ball
    assert not torch.equal(whole[0], whole[1])


@pytest.fixture(scope="module")
def null_group(tmp_path_factory):
    """8 models that learned nothing: a learning rate of 1e-12 (the weights stay at their random
    initialisation) and GroupNorm (no running statistics of the training half), so nothing about a
    model depends on which samples it trained on."""
    return train_group(
        tmp_path_factory.mktemp("null"),
        8,
        data={"pool_size": 200, "pool_seed": 4},
        train={"epochs": 1, "lr": 1e-12, "norm": "group", "batch_size": 50},
        eval={**ROBUST_SIGNALS, "attack": {"steps": 2}, "queries": 1},
    )


def test_null_groups_give_chance_for_every_robust_attack(null_group):
    group = load_group(null_group)
    names = (*audit.ATTACK_SETS["adversarial"], *audit.ATTACK_SETS["boundary"])
    result, _ = audit.run_audit(group, audit.AuditConfig(attacks=names))
    for name in names:
        res = result["attacks"][name]
        assert "skipped" not in res, (name, res.get("skipped"))
        # 8 targets x 200 samples: the mean AUC over targets has a standard error of about 0.015
        assert abs(res["mean"]["auc_mean"] - 0.5) < 0.06, (name, res["mean"]["auc_mean"])
    # The robust signals were recorded for every sample, and their cost with them.
    assert group.signals["adv_phi"].shape == (8, 200, 1)
    assert all(mt["adversarial_seconds"] > 0 and mt["boundary_seconds"] > 0 for mt in group.metrics)
    eps = result["empirical_epsilon"]
    assert eps["epsilon"] < 0.5 and eps["n_attacks"] == len(names)


def _trained(directory):
    """The run config and the trained state of one model's run directory (from its checkpoint)."""
    run = RunConfig.from_dict(read_json_file(directory / "config.json")["run"])
    state = prepare(run, "cpu", pool=load_pool(run))
    read_checkpoint(state, directory)
    return run, state


def test_adversarial_signals_do_not_depend_on_the_batch(null_group):
    group = load_group(null_group)
    run, state = _trained(group.dirs[0])
    big = adversarial_signals(state.model, state.pool, run.eval.adversarial, device=torch.device("cpu"))
    small = adversarial_signals(state.model, state.pool, run.eval.adversarial, device=torch.device("cpu"), batch_size=7)
    # Equal up to rounding: a batch of another size sums the gradients in another order, and a sign
    # step of a coordinate whose gradient is ~0 can then go the other way (seen: 1 sample in 200).
    for name, value in big.items():
        close = np.isclose(small[name], value, rtol=1e-4, atol=1e-5)
        assert close.mean() >= 0.97, (name, close.mean())
    # ... and they are what the run recorded (in the batches it used).
    recorded = adversarial_signals(
        state.model,
        state.pool,
        run.eval.adversarial,
        device=torch.device("cpu"),
        batch_size=attack_batch(run.eval.batch_size, torch.device("cpu")),
    )
    np.testing.assert_allclose(recorded["adv_phi"], group.signals["adv_phi"][0], rtol=1e-5, atol=1e-5)


def test_the_training_half_accuracies_equal_a_plain_loop(null_group):
    """The gap's train-half natural accuracy against argmax over the model's own training samples."""
    group = load_group(null_group)
    for j in (0, 3):
        _, state = _trained(group.dirs[j])
        idx = torch.from_numpy(np.flatnonzero(state.keep))
        with torch.no_grad():
            state.model.eval()
            pred = state.model(state.pool.images[idx].float() / 255).argmax(1)
        want = int((pred == state.pool.labels[idx]).sum()) / idx.numel()
        mt = group.metrics[j]
        assert mt["train_natural_acc"] == pytest.approx(want, abs=1e-12)
        assert mt["n_train_eval"] == int(state.keep.sum())
        # The gaps: one procedure on both halves, from the run's own per-sample signals.
        z = np.load(group.dirs[j] / "samples.npz")
        keep, clean, adv = z["keep"], z["correct"][:, 0], z["adv_correct"][:, 0]
        assert mt["natural_gap"] == pytest.approx(clean[keep].mean() - clean[~keep].mean(), abs=1e-12)
        assert mt["train_robust_acc"] == pytest.approx(adv[keep].mean(), abs=1e-12)
        assert mt["robust_gap"] == pytest.approx(adv[keep].mean() - adv[~keep].mean(), abs=1e-12)
        assert mt["gap_attack"].startswith("adversarial queries (PGD-3")


def test_without_adversarial_queries_the_robust_gap_uses_the_evaluation_attack(tmp_path):
    directory = train_group(
        tmp_path, 2, data={"pool_size": 100, "pool_seed": 2}, train={"epochs": 1}, eval={"attack": {"steps": 2}}
    )
    for d in sorted(directory.iterdir()):
        mt = read_json_file(d / "metrics.json")
        assert mt["gap_attack"] == "the evaluation attack (PGD-2) on both halves"
        assert mt["robust_gap"] == pytest.approx(mt["train_robust_acc"] - mt["robust_acc_pgd"], abs=1e-12)
        assert 0 <= mt["train_robust_acc"] <= 1 and mt["n_train_eval"] == 50


def test_adversarial_queries_find_more_members_of_pgd_at_models_that_fit_their_training_half(tmp_path):
    """8 PGD-AT models, each fitting its 80 training samples far better than the held-out ones (the
    robust gap below), as the issue measured on the quickstart's recipe: LiRA on the adversarial
    query tells members from non-members better than LiRA on the clean image, target by target."""
    directory = train_group(
        tmp_path,
        8,
        data={"pool_size": 160, "pool_seed": 5},
        train={"epochs": 20, "batch_size": 20, "lr": 0.05, "schedule": "constant", "augment": False},
        attack={"steps": 2},
        eval={"attack": {"steps": 5}, "adversarial": {"steps": 5}, "boundary": None, "queries": 1},
    )
    group = load_group(directory)
    names = ("lira_online_fixed", "lira_online_fixed_adv", "lira_offline_fixed", "lira_offline_fixed_adv")
    result, _ = audit.run_audit(group, audit.AuditConfig(attacks=names))
    assert result["accuracy"]["robust_gap"]["mean"] > 0.1  # robust accuracy: train half >> held-out half
    for clean in ("lira_online_fixed", "lira_offline_fixed"):
        before = np.array([r["auc"] for r in result["attacks"][clean]["per_target"]])
        after = np.array([r["auc"] for r in result["attacks"][f"{clean}_adv"]["per_target"]])
        # seen: +0.044 (online) and +0.025 (offline) on average, higher for 8 of 8 targets (fp32 on the
        # first machine, and bf16); +0.020 and 5 of 8 for offline at fp32 on a 2-core EPYC without AMX.
        # The 8 targets are one training draw's, so the count is not a test of its own: a majority.
        assert (after - before).mean() > 0.01, (clean, before, after)
        assert (after > before).sum() >= 5, (clean, before, after)
