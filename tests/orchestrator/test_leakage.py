"""The worst-case side of a summary (orchestrator.leakage): the strongest attack chosen on half the
seeds and reported on the other half only, every attack's leakage across seeds, and the empirical
epsilon pooled over independent seeds but not over seeds that share their keep masks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from scipy import stats

from demem.privacy.epsilon import one_run_epsilon
from orchestrator import leakage


def _audits(values: dict[str, list[float]], seeds=(0, 1, 2, 3, 4, 5), targets=(0, 1, 2, 3)) -> pd.DataFrame:
    """One group's audit rows: attack -> per-seed AUCs (every target of a seed gets its seed's value
    plus a small per-target offset, so targets differ)."""
    rows = []
    for attack, per_seed in values.items():
        for s, v in zip(seeds, per_seed):
            for t in targets:
                rows.append(
                    {
                        "group_id": "g",
                        "seed": s,
                        "target": t,
                        "attack": attack,
                        "family": "lira",
                        "query": "clean",
                        "threat_model": "scores",
                        "auc": v + 0.001 * t,
                    }
                )
    return pd.DataFrame(rows)


def test_the_strongest_attack_is_chosen_on_half_the_seeds_and_reported_on_the_rest():
    # "a" is best on the selection seeds (0, 2, 4) but worst on the report seeds (1, 3, 5); choosing on
    # all seeds would pick "b", and reporting the maximum would show the largest mean of any.
    audits = _audits({"a": [0.70, 0.50, 0.70, 0.50, 0.70, 0.50], "b": [0.60, 0.65, 0.60, 0.65, 0.60, 0.66]})
    out = leakage.strongest(audits, {"g": "group"}).iloc[0]
    assert out["attack"] == "a" and out["how"] == "selected on seeds 0, 2, 4, reported on seeds 1, 3, 5"
    report = audits[(audits["attack"] == "a") & audits["seed"].isin([1, 3, 5])]
    seed_means = report.groupby("seed")["auc"].mean().to_numpy()
    half = stats.t.ppf(0.975, 2) * seed_means.std(ddof=1) / np.sqrt(3)
    assert out["value_mean"] == np.float64(seed_means.mean()) and out["value_n"] == 3
    np.testing.assert_allclose([out["value_lo"], out["value_hi"]], [seed_means.mean() - half, seed_means.mean() + half])
    np.testing.assert_allclose(out["selection_value"], 0.70 + 0.0015)
    # One seed: the halves are the even and odd targets of that draw, and there is no interval.
    one = leakage.strongest(_audits({"a": [0.6], "b": [0.7]}, seeds=(3,)), {"g": "group"}).iloc[0]
    assert one["attack"] == "b" and one["value_n"] == 1 and np.isnan(one["value_lo"])
    np.testing.assert_allclose(one["value_mean"], 0.7 + 0.001 * 2)  # targets 1 and 3
    assert "one seed: selected on targets 0, 2, reported on targets 1, 3" in one["how"]


def test_every_attack_has_its_seed_level_interval():
    audits = _audits({"a": [0.70, 0.50, 0.70, 0.50, 0.70, 0.50]})
    low = pd.DataFrame(
        [
            {"group_id": "g", "seed": s, "attack": "a", "level": "tpr_at_1pct", "tpr": 0.01 * s, "resolvable": True}
            for s in range(6)
        ]
    )
    row = leakage.every_attack(audits, low, {"g": "group"}).iloc[0]
    assert row["auc_n"] == 6 and row["tpr_at_1pct_n"] == 6
    np.testing.assert_allclose(row["tpr_at_1pct_mean"], 0.025)
    np.testing.assert_allclose(row["auc_mean"], audits.groupby("seed")["auc"].mean().mean())


def _epsilon_rows(pool_seeds: list[int], counts: list[tuple[int, int]], canaries: int = 100) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "group_id": "g",
                "seed": s,
                "pool_seed": p,
                "attack": "a",
                "model": 0,
                "beta": 0.05,
                "delta": 0.0,
                "adjacency": "replace-one",
                "canaries": canaries,
                "counts": json.dumps([{"fraction": 0.5, "r": r, "v": v}]),
            }
            for s, (p, (r, v)) in enumerate(zip(pool_seeds, counts))
        ]
    )


def test_empirical_epsilon_pools_seeds_with_their_own_pools_only():
    counts = [(50, 40), (50, 38), (50, 41)]
    runs = pd.DataFrame({"group_id": ["g"], "status": ["done"], "epsilon": [np.nan]})
    pooled = leakage.empirical_epsilons(_epsilon_rows([0, 1, 2], counts), runs, {"g": "group"}).iloc[0]
    # per-seed pools: independent coins, one test on the summed counts (one attack, one fraction)
    assert pooled["seeds_pooled"] and (pooled["guesses"], pooled["correct"]) == (150, 119)
    np.testing.assert_allclose(pooled["empirical_epsilon"], one_run_epsilon(150, 119, m=300, beta=0.05))
    # one shared pool: the same coins in every seed, so each seed is its own test at beta / 3
    shared = leakage.empirical_epsilons(_epsilon_rows([7, 7, 7], counts), runs, {"g": "group"}).iloc[0]
    assert not shared["seeds_pooled"] and (shared["guesses"], shared["correct"]) == (50, 41)
    np.testing.assert_allclose(shared["empirical_epsilon"], one_run_epsilon(50, 41, m=100, beta=0.05 / 3))
    assert shared["empirical_epsilon"] < pooled["empirical_epsilon"]
    assert np.isnan(pooled["accountant_epsilon"])
