"""Every attack's leakage per group, the strongest attack chosen without peeking, and the empirical
epsilon: the worst-case side of a summary (`demem summarize` writes them to ranking.md, attacks.csv
and the report).

    every attack     per (group, attack): ROC AUC and the TPR at 1% FPR pooled over each seed's
                     targets, mean and 95% t interval across seeds (n = seeds), with the attack's
                     family, query kind and threat model.
    strongest        per group, the attack with the highest mean leakage on the SELECTION half of the
                     seeds (every other seed in sorted order: 0th, 2nd, ...), reported on the other
                     half only, so the choice never sees the numbers it is reported with. With one
                     seed, the halves are the even and odd targets of that draw: one draw, no
                     interval. The maximum over attacks on the same data would be biased upward.
    empirical eps    per group, the one-run lower bound of Steinke, Nasr & Jagielski (2023) on the
                     swap canaries of every audited attack (`demem.privacy.epsilon`), the guess counts
                     pooled over the seeds (independent training runs), beta split over the attacks
                     (Bonferroni), beside the accountant's epsilon where the group is DP.

Ray-free; reads the tables `orchestrator.collect` writes.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from demem.privacy.epsilon import epsilon_from_counts, pool_counts
from demem.stats import seed_level, t_interval
from orchestrator.columns import LEAKAGE_LABELS
from orchestrator.fmt import fmt_ci, seeds_unit

POOLED_KEY = "tpr_at_1pct"


def every_attack(audits: pd.DataFrame, lowfpr: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """One row per (group, attack) that ran: AUC and the pooled TPR at 1% FPR across seeds."""
    rows = []
    if audits.empty:
        return pd.DataFrame(rows)
    for (gid, attack), a in audits.groupby(["group_id", "attack"], sort=False):
        first = a.iloc[0]
        row: dict[str, Any] = {
            "group_id": gid,
            "group_label": labels.get(gid, gid),
            "attack": attack,
            "family": first.get("family", "—"),
            "query": first.get("query", "clean"),
            "threat_model": first.get("threat_model", "scores"),
        }
        for key, ci in (("auc", seed_level(a, "auc")), (POOLED_KEY, _pooled(lowfpr, gid, attack))):
            for part in ("mean", "lo", "hi", "n"):
                row[f"{key}_{part}"] = ci[part]
        low = _pooled_rows(lowfpr, gid, attack)
        row[f"{POOLED_KEY}_resolvable"] = bool(low["resolvable"].all()) if len(low) else None
        rows.append(row)
    return pd.DataFrame(rows)


def _pooled_rows(lowfpr: pd.DataFrame, gid: str, attack: str) -> pd.DataFrame:
    if lowfpr.empty:
        return lowfpr
    return lowfpr[(lowfpr["group_id"] == gid) & (lowfpr["attack"] == attack) & (lowfpr["level"] == POOLED_KEY)]


def _pooled(lowfpr: pd.DataFrame, gid: str, attack: str) -> dict[str, float]:
    rows = _pooled_rows(lowfpr, gid, attack)
    return seed_level(rows, "tpr") if len(rows) else t_interval([])


def strongest(audits: pd.DataFrame, labels: dict[str, str], metric: str = "auc") -> pd.DataFrame:
    """Per group, the attack with the highest `metric` on the selection half, reported on the rest.

    Returns one row per group: attack, the selection and report units ("seeds 0, 2, 4" / "targets
    0, 2 of seed 3"), the chosen attack's value on the selection half, and its mean, interval and n
    on the report half (an interval across the report seeds; none from one draw's targets)."""
    rows = []
    if audits.empty:
        return pd.DataFrame(rows)
    for gid, a in audits.groupby("group_id", sort=False):
        a = a[np.isfinite(pd.to_numeric(a[metric], errors="coerce").to_numpy(dtype=float))]
        if a.empty:
            continue
        seeds = sorted(a["seed"].unique())
        if len(seeds) >= 2:
            pick, rest = set(seeds[0::2]), set(seeds[1::2])
            select, report = a[a["seed"].isin(pick)], a[a["seed"].isin(rest)]
            how = f"selected on seeds {_list(pick)}, reported on seeds {_list(rest)}"
        else:
            targets = sorted(a["target"].unique())
            if len(targets) < 2:
                continue
            pick, rest = set(targets[0::2]), set(targets[1::2])
            select, report = a[a["target"].isin(pick)], a[a["target"].isin(rest)]
            how = f"one seed: selected on targets {_list(pick)}, reported on targets {_list(rest)} (one draw)"
        # Rank on the selection half: the mean over its seeds of each seed's mean over targets.
        by_attack = select.groupby(["attack", "seed"])[metric].mean().groupby("attack").mean()
        chosen = str(by_attack.idxmax())
        mine = report[report["attack"] == chosen]
        ci = seed_level(mine, metric) if len(seeds) >= 2 else {**t_interval([]), "mean": float(mine[metric].mean())}
        if len(seeds) < 2:
            ci["n"] = 1
        rows.append(
            {
                "group_id": gid,
                "group_label": labels.get(gid, gid),
                "attack": chosen,
                "metric": metric,
                "how": how,
                "n_candidates": int(by_attack.size),
                "selection_value": float(by_attack.max()),
                **{f"value_{k}": ci[k] for k in ("mean", "lo", "hi", "n")},
            }
        )
    return pd.DataFrame(rows)


def _list(values) -> str:
    return ", ".join(str(int(v)) for v in sorted(values))


def empirical_epsilons(epsilon: pd.DataFrame, runs: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """Per group: the one-run lower bound from the guess counts of every attack, beta split over the
    attacks (Bonferroni); beside it the accountant's epsilon of the DP groups.

    Seeds with their own pools (seeds.pool: per-seed) have independent keep masks, hence independent
    coins: their counts are pooled into one test. Seeds that share a pool share the keep masks, so
    their coins are the same and pooling them would count one coin several times: each seed is then
    its own test and beta is split over the seeds too."""
    rows = []
    if epsilon.empty:
        return pd.DataFrame(rows)
    for gid, e in epsilon.groupby("group_id", sort=False):
        attacks = list(dict.fromkeys(e["attack"]))
        first = e.iloc[0]
        independent = e.groupby("seed")["pool_seed"].first().nunique() == e["seed"].nunique()
        units = [e] if independent else [e[e["seed"] == s] for s in sorted(e["seed"].unique())]
        beta = float(first["beta"]) / (len(attacks) * len(units))
        best: dict[str, Any] = {"epsilon": -1.0}
        for unit in units:
            for attack in attacks:
                mine = unit[unit["attack"] == attack]
                if mine.empty:
                    continue
                counts = pool_counts([json.loads(c) for c in mine["counts"]])
                bound = epsilon_from_counts(
                    counts, delta=float(first["delta"]), beta=beta, canaries=int(mine["canaries"].sum())
                )
                if bound["epsilon"] > best["epsilon"]:
                    best = {**bound, "attack": attack}
        done = runs[(runs["group_id"] == gid) & (runs["status"] == "done")] if not runs.empty else runs
        accountant = pd.to_numeric(done["epsilon"], errors="coerce") if "epsilon" in done else pd.Series(dtype=float)
        rows.append(
            {
                "group_id": gid,
                "group_label": labels.get(gid, gid),
                "empirical_epsilon": float(best["epsilon"]),
                "attack": best["attack"],
                "guesses": int(best["r"]),
                "correct": int(best["v"]),
                "canaries": int(best["canaries"]),
                "n_seeds": int(e["seed"].nunique()),
                "seeds_pooled": bool(independent),
                "n_attacks": len(attacks),
                "beta": float(first["beta"]),
                "delta": float(first["delta"]),
                "adjacency": first["adjacency"],
                "accountant_epsilon": float(accountant.max()) if accountant.notna().any() else np.nan,
            }
        )
    return pd.DataFrame(rows)


def add_worst_case(df: pd.DataFrame, strongest: pd.DataFrame, epsilons: pd.DataFrame) -> None:
    """Each group's strongest attack (chosen without peeking) and its empirical epsilon, as columns."""
    by_id = strongest.set_index("group_id") if not strongest.empty else pd.DataFrame()
    eps = epsilons.set_index("group_id") if not epsilons.empty else pd.DataFrame()
    df["strongest_attack"] = [by_id.at[g, "attack"] if g in by_id.index else None for g in df["group_id"]]
    for part in ("mean", "lo", "hi", "n"):
        df[f"strongest_{part}"] = [by_id.at[g, f"value_{part}"] if g in by_id.index else np.nan for g in df["group_id"]]
    df["empirical_epsilon"] = [eps.at[g, "empirical_epsilon"] if g in eps.index else np.nan for g in df["group_id"]]


# ---------------------------------------------------------------------------------------------------
# ranking.md sections
# ---------------------------------------------------------------------------------------------------


def _cell(r: pd.Series, key: str) -> str:
    n = r[f"{key}_n"]
    if not n:
        return "—"
    return fmt_ci(r[f"{key}_mean"], r[f"{key}_lo"], r[f"{key}_hi"], n, unit=seeds_unit(n))


def every_attack_markdown(table: pd.DataFrame) -> list[str]:
    if table.empty:
        return []
    head = ["group", "attack", "family", "query", "threat model", "ROC AUC", "pooled TPR at 1% FPR"]
    lines = ["### Every attack", "", "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for _, r in table.iterrows():
        pooled = _cell(r, POOLED_KEY) if r[f"{POOLED_KEY}_resolvable"] is not False else "below resolution"
        cells = [r["group_label"], r["attack"], r["family"], r["query"], r["threat_model"], _cell(r, "auc"), pooled]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    lines += [
        "",
        "Mean over each seed's audited targets (AUC) or pooled over them (TPR), then mean ± 95% t half-width "
        "across seeds (n = seeds). Query: clean views, an adversarial query crafted against the target "
        "(PGD; needs its gradients), or the distance to its decision boundary (bisection with PGD).",
    ]
    return lines


def strongest_markdown(table: pd.DataFrame) -> list[str]:
    if table.empty:
        return []
    metric = LEAKAGE_LABELS.get(table["metric"].iloc[0], table["metric"].iloc[0])
    head = ["group", "strongest attack", f"{metric} (report half)", f"{metric} (selection half)", "how"]
    lines = [
        "### The strongest attack, chosen without peeking",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for _, r in table.iterrows():
        n = int(r["value_n"])
        value = fmt_ci(r["value_mean"], r["value_lo"], r["value_hi"], n, unit=seeds_unit(n))
        cells = [r["group_label"], r["attack"], value, f"{r['selection_value']:.4f}", r["how"]]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    lines += [
        "",
        "Method: the attack is chosen on half of the data (every other seed in sorted order, among "
        f"{int(table['n_candidates'].max())} attacks) and its leakage is reported on the other half only, so "
        "the choice never sees the numbers it is reported with (the maximum over attacks on the same seeds "
        "would be biased upward). The interval is across the report seeds (n = those seeds).",
    ]
    return lines


def epsilon_markdown(table: pd.DataFrame, strongest: pd.DataFrame | None = None) -> list[str]:
    """The empirical epsilon of each group, beside its accountant's epsilon (DP groups) and the
    leakage of its strongest attack (from `strongest`)."""
    if table.empty:
        return []
    leak = {}
    if strongest is not None and not strongest.empty:
        for _, r in strongest.iterrows():
            n = int(r["value_n"])
            value = fmt_ci(r["value_mean"], r["value_lo"], r["value_hi"], n, unit=seeds_unit(n))
            leak[r["group_id"]] = f"{r['attack']}: {value}"
    head = ["group", "empirical ε (lower bound)", "attack", "correct / guesses", "canaries", "accountant ε (DP)"]
    head.append("strongest attack's leakage")
    lines = ["### Empirical epsilon", "", "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for _, r in table.iterrows():
        acc = r["accountant_epsilon"]
        cells = [
            r["group_label"],
            f"{r['empirical_epsilon']:.3f}",
            r["attack"] or "—",
            f"{int(r['correct'])} / {int(r['guesses'])}",
            str(int(r["canaries"])),
            f"{acc:.3f} (add/remove; ≤ {2 * acc:.3f} replace-one)" if np.isfinite(acc) else "—",
            leak.get(r["group_id"], "—"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    first = table.iloc[0]
    lines += [
        "",
        f"One-run lower bound (Steinke, Nasr & Jagielski, NeurIPS 2023) at confidence {1 - first['beta']:.0%}, "
        f"delta {first['delta']:g}: swap canaries (pairs of pool samples with exactly one in a model's "
        "training half; which one is a fair coin), guesses from each attack's scores on one target "
        "per seed (its references' keep rows are independent of its coins), counts pooled "
        "over the seeds where each drew its own pool (else one test per seed), beta split over the attacks, "
        "seeds and guess fractions (Bonferroni). It bounds the replace-one epsilon, which an add/remove "
        "accountant's epsilon bounds by twice itself.",
    ]
    return lines
