"""The membership-attack registry: what the audit, the spec checks and the help derive from it, each
built-in attack equal to its estimator called directly, the stated minimum group sizes true of the
estimators, and a newly registered attack run by the audit's one loop."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from demem.artifacts import GroupData
from demem.privacy import attacks, audit, mia, rmia
from demem.privacy.attacks import MIA, AttackRefused, MembershipAttack, Scores, register_attack
from demem.privacy.roc import attack_metrics
from demem.registry import BUILTIN
from demem.testing import synthetic_group


def test_the_audit_names_come_from_the_registry():
    assert audit.MIA_ATTACKS == tuple(MIA.registered())
    for family, names in (("lira", audit.LIRA_ATTACKS), ("rmia", audit.RMIA_ATTACKS)):
        assert names and all(MIA.get(n).family == family for n in names)
        # a family's set is its clean-query attacks, as before robust signals existed
        assert audit.ATTACK_SETS[family] == tuple(n for n in names if MIA.get(n).query == "clean")
    assert audit.ATTACK_SETS["all"] == audit.MIA_ATTACKS
    plugin_families = {MIA.get(n).family for n in MIA.registered() if MIA.origin(n) != BUILTIN}  # examples/plugin
    assert set(audit.ATTACK_SETS) - plugin_families == {
        "lira", "rmia", "threshold", "clean", "adversarial", "boundary", "all"
    }  # fmt: skip
    assert audit.ATTACK_SETS["threshold"] == mia.THRESHOLD_ATTACKS
    assert audit.ATTACK_SETS["lira"] == tuple(f"lira_{v}" for v in mia.LIRA_VARIANTS)
    assert audit.ATTACK_SETS["rmia"] == tuple(f"rmia_{v}" for v in rmia.RMIA_VARIANTS)
    assert audit.ATTACK_SETS["adversarial"] == tuple(
        f"{n}_adv" for n in (*audit.ATTACK_SETS["lira"], *audit.ATTACK_SETS["rmia"], *mia.THRESHOLD_ATTACKS)
    )
    assert audit.ATTACK_SETS["boundary"] == ("boundary_linf", "lira_boundary_linf", "boundary_l2", "lira_boundary_l2")
    assert sorted(
        audit.ATTACK_SETS["clean"] + audit.ATTACK_SETS["adversarial"] + audit.ATTACK_SETS["boundary"]
    ) == sorted(audit.MIA_ATTACKS)
    # The facts each attack states match what its estimator reads.
    for name in audit.ATTACK_SETS["lira"]:
        a = MIA.get(name)
        assert (a.signals, a.queries, a.references) == (("phi",), "all", "offline" if "offline" in name else "online")
    for name in (*audit.ATTACK_SETS["threshold"], *audit.ATTACK_SETS["boundary"]):
        assert MIA.get(name).queries == "first"
        assert MIA.get(name).references == ("online" if name.startswith("lira") else "none")
    for name in (*audit.ATTACK_SETS["adversarial"], *audit.ATTACK_SETS["boundary"]):
        a = MIA.get(name)
        assert a.threat_model == "white-box gradients" and a.queries == "first"
        assert a.signals[0].startswith("adv_" if a.query == "adversarial" else "boundary_")
    assert {MIA.get(n).threat_model for n in audit.ATTACK_SETS["clean"]} == {"scores"}


def test_attack_help_lists_every_registered_attack(capsys):
    from demem.commands import main

    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in (*MIA.registered(), *audit.ATTACK_SETS):
        assert name in text, name


def _setup(group: GroupData) -> attacks.AttackSetup:
    return audit.attack_setup(group, audit.AuditConfig())


def test_each_builtin_attack_equals_its_estimator_called_directly():
    group = synthetic_group(8)
    setup = _setup(group)
    partners = np.array([t ^ 1 for t in range(8)])  # complementary pairs (2k, 2k+1)
    np.testing.assert_array_equal(setup.partners, partners)
    for v in mia.LIRA_VARIANTS:
        want = mia.lira_scores(group.signals["phi"], group.keep, variant=v, min_shadows=2, exclude=partners)
        np.testing.assert_array_equal(MIA.get(f"lira_{v}").score(setup).scores, want)
    prob = np.exp(-group.signals["loss"]).mean(axis=2)
    for v in rmia.RMIA_VARIANTS:
        want = rmia.rmia_scores(prob, group.keep, variant=v, exclude=partners)
        np.testing.assert_array_equal(MIA.get(f"rmia_{v}").score(setup).scores, want)
    # On adversarial queries: the same estimators on the adv_ signals.
    for v in mia.LIRA_VARIANTS:
        want = mia.lira_scores(group.signals["adv_phi"], group.keep, variant=v, min_shadows=2, exclude=partners)
        np.testing.assert_array_equal(MIA.get(f"lira_{v}_adv").score(setup).scores, want)
    prob = np.exp(-group.signals["adv_loss"][:, :, 0])
    for v in rmia.RMIA_VARIANTS:
        want = rmia.rmia_scores(prob, group.keep, variant=v, exclude=partners)
        np.testing.assert_array_equal(MIA.get(f"rmia_{v}_adv").score(setup).scores, want)
    np.testing.assert_array_equal(MIA.get("loss_adv").score(setup).scores, -group.signals["adv_loss"][:, :, 0])
    np.testing.assert_array_equal(MIA.get("confidence_adv").score(setup).scores, group.signals["adv_phi"][:, :, 0])
    # Boundary distance: the distance itself, and online LiRA (global variance) on its floored log.
    for norm in ("linf", "l2"):
        d = group.signals[f"boundary_{norm}"][:, :, 0]
        np.testing.assert_array_equal(MIA.get(f"boundary_{norm}").score(setup).scores, d)
        cap = group.run["eval"]["boundary"][f"{norm}_max"]
        log_d = np.log(np.maximum(d, cap * 1e-3))
        want = mia.lira_scores(log_d, group.keep, variant="online_fixed", min_shadows=2, exclude=partners)
        np.testing.assert_array_equal(MIA.get(f"lira_boundary_{norm}").score(setup).scores, want)
    scored = MIA.get("loss").score(setup)
    np.testing.assert_array_equal(scored.scores, -group.signals["loss"][:, :, 0])
    # Per-class thresholds learned on the next model, applied to the target.
    every = -group.signals["loss"][:, :, 0]
    for t in range(8):
        thr = mia.class_thresholds(every[(t + 1) % 8], group.keep[(t + 1) % 8], group.labels, 10)
        pred = mia.apply_class_thresholds(every[t], group.labels, thr)
        want = mia.balanced_accuracy_of(pred, group.keep[t])
        assert scored.per_target["balanced_acc_class_thresholds"][t] == want


@pytest.mark.parametrize("name", list(MIA.registered()))
def test_each_attack_runs_from_its_stated_minimum_and_is_refused_below(name):
    need = MIA.get(name).min_models
    result, _ = audit.run_audit(synthetic_group(need), audit.AuditConfig(attacks=(name,)))
    assert "skipped" not in result["attacks"][name]
    assert result["attacks"][name]["mean"]["n_targets"] == need
    smaller = need - 2  # groups come in complementary pairs
    if smaller >= attacks.AUDIT_MIN_MODELS:
        result, _ = audit.run_audit(synthetic_group(smaller), audit.AuditConfig(attacks=(name,)))
        assert "at least" in result["attacks"][name]["skipped"]
        assert "mean" not in result["attacks"][name]
    else:  # the audit's own floor: every sample in 2 models and out of 2
        with pytest.raises(ValueError, match=">= 2 IN and >= 2 OUT"):
            audit.run_audit(synthetic_group(smaller), audit.AuditConfig(attacks=(name,)))


@pytest.mark.parametrize("name", [*audit.ATTACK_SETS["adversarial"], *audit.ATTACK_SETS["boundary"]])
def test_a_robust_attack_on_models_that_did_not_record_its_signal_is_refused(name):
    result, _ = audit.run_audit(synthetic_group(8, robust=False), audit.AuditConfig(attacks=(name, "loss")))
    assert "did not record" in result["attacks"][name]["skipped"]
    assert (
        "eval.adversarial" in result["attacks"][name]["skipped"]
        or "eval.boundary" in result["attacks"][name]["skipped"]
    )
    assert "mean" in result["attacks"]["loss"]  # the others still run


def _negated_loss(setup: attacks.AttackSetup) -> Scores:
    return Scores(-setup.signal("loss", "first")[setup.targets], {"variant": "plain", "family": "custom"})


def _refusing(setup: attacks.AttackSetup) -> Scores:
    raise AttackRefused("needs a thousand reference models")


def _custom(name: str, score) -> MembershipAttack:
    return MembershipAttack(name, "custom", "plain", "none", 4, ("loss",), "first", "scores", score)


def test_a_registered_attack_goes_through_the_audit_loop(monkeypatch):
    monkeypatch.setattr(MIA, "_items", dict(MIA._items))  # registrations in this test stay in it
    register_attack(_custom("neg_loss", _negated_loss))
    register_attack(_custom("refuses", _refusing))
    group = synthetic_group(6)
    result, _ = audit.run_audit(group, audit.AuditConfig(attacks=("neg_loss", "refuses", "loss")))
    assert list(result["attacks"]) == ["neg_loss", "refuses", "loss"]
    assert result["attacks"]["refuses"] == {"variant": "plain", "skipped": "needs a thousand reference models"}
    mine = result["attacks"]["neg_loss"]
    assert mine["family"] == "custom"
    for row in mine["per_target"]:
        t = row["target"]
        assert row["auc"] == attack_metrics(-group.signals["loss"][t, :, 0], group.keep[t])["auc"]
        assert row["auc"] == result["attacks"]["loss"]["per_target"][t]["auc"]  # the same scores
    assert "custom" in attacks.attack_sets() and attacks.attack_sets()["custom"] == ("neg_loss", "refuses")


def test_registration_refuses_bad_facts_and_duplicates(monkeypatch):
    monkeypatch.setattr(MIA, "_items", dict(MIA._items))
    with pytest.raises(ValueError, match="registered twice"):
        register_attack(_custom("loss", _negated_loss))
    with pytest.raises(ValueError, match="references 'sometimes'"):
        register_attack(replace(_custom("x", _negated_loss), references="sometimes"))


def test_the_readme_attack_table_states_what_the_registry_says():
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    rows = [r for r in readme.splitlines() if r.startswith("| `") and r.count("|") >= 7]
    stated = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        names = [n for n in cells[0].split("`") if n.strip(", ")]
        if not all(n in MIA for n in names):
            continue  # another table of the README
        signal, queries = (c.strip() for c in cells[4].split(","))
        query, threat = (c.strip() for c in cells[5].split(",", 1))
        for name in names:
            stated[name] = (cells[1], cells[2], int(cells[3]), (signal,), queries, query, threat)
    assert set(stated) == {n for n in MIA.registered() if MIA.origin(n) == BUILTIN}  # plugins document their own
    for name, facts in stated.items():
        a = MIA.get(name)
        assert facts == (a.family, a.references, a.min_models, a.signals, a.queries, a.query, a.threat_model), name
