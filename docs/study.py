"""The numbers of docs/results.md, from a finished run of search_spaces/study_fashion.yaml:

    .venv/bin/python docs/study.py results/study-fashion > study_tables.md

Every comparison is `group - reference`, paired: accuracy per (seed, model index) (the same keep
row, so the same training half), leakage per (seed, audited target), pooled low-FPR TPR and
memorization bins per seed; differences are averaged within each seed and the 95% t interval is
across seeds (n = seeds: the training draws, the unit of replication). A '*' marks an interval
that excludes 0.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from demem.stats import excludes_zero, paired_seed_delta, seed_level, t_interval
from orchestrator.collect import load_tables
from orchestrator.columns import NATURAL_ACC, ROBUST_ACC

ATTACKS = {"LiRA": "lira_online_fixed", "RMIA": "rmia_online"}
# The study's groups by what they are (method, AWP on, lambda, threshold), as runs.parquet records them.
STANDARD, PGD_AT, TRADES = ("standard", False, 0.0, 0.0), ("pgd_at", False, 0.0, 0.0), ("trades", False, 0.0, 0.0)
AWP, DP = ("pgd_at", True, 0.0, 0.0), ("dp_sgd", False, 0.0, 0.0)


def demem(base: tuple, lam: float, tau: float = 0.0) -> tuple:
    return (base[0], base[1], lam, tau)


def name(key: tuple) -> str:
    method, awp, lam, tau = key
    text = {"standard": "standard", "pgd_at": "PGD-AT", "trades": "TRADES", "dp_sgd": "DP-SGD"}[method]
    text += " + AWP" if awp else ""
    text += f" + DeMem λ={lam:g}" if lam else ""
    return text + (f" τ={tau:g}" if tau else "")


# memorization (acc when IN - acc when OUT, of the reference group's models) bins for claim 2
MEM_BINS = [(-1.01, 0.0, "<= 0"), (0.0, 0.25, "(0, 0.25]"), (0.25, 0.5, "(0.25, 0.5]"), (0.5, 1.0, "(0.5, 1]")]


def fmt(ci: dict[str, float], scale: float = 100.0, digits: int = 1) -> str:
    """'mean [lo, hi]' in percentage points by default; '*' when the interval excludes 0."""
    if not np.isfinite(ci.get("mean", np.nan)):
        return "n/a"
    if not np.isfinite(ci.get("lo", np.nan)):
        return f"{ci['mean'] * scale:+.{digits}f} (n={ci['n']})"
    star = "*" if excludes_zero(ci) else ""
    return f"{ci['mean'] * scale:+.{digits}f} [{ci['lo'] * scale:+.{digits}f}, {ci['hi'] * scale:+.{digits}f}]{star}"


def level(ci: dict[str, float], scale: float = 100.0, digits: int = 1) -> str:
    if not np.isfinite(ci.get("lo", np.nan)):
        return f"{ci['mean'] * scale:.{digits}f}"
    return f"{ci['mean'] * scale:.{digits}f} ± {(ci['hi'] - ci['mean']) * scale:.{digits}f}"


class Study:
    def __init__(self, root: str | Path) -> None:
        t = load_tables(Path(root))
        self.runs = t.runs[t.runs["status"] == "done"]
        self.audits, self.low = t.audits, t.lowfpr
        self.samples = pd.read_parquet(Path(root) / "samples.parquet")
        first = self.runs.groupby("group_id", sort=False).first()
        self.ids = {
            (
                r["config.method.name"],
                bool(r["config.method.awp_gamma"] or 0),
                float(r["config.demem.lambda"]),
                float(r["config.demem.risk_threshold"]),
            ): gid
            for gid, r in first.iterrows()
        }
        self.n_seeds = int(self.runs["seed"].nunique())

    def has(self, key: tuple) -> bool:
        return key in self.ids

    def _runs(self, label: tuple) -> pd.DataFrame:
        return self.runs[self.runs["group_id"] == self.ids[label]].rename(columns={"model_index": "unit"})

    def _targets(self, label: tuple, attack: str) -> pd.DataFrame:
        a = self.audits
        return a[(a["group_id"] == self.ids[label]) & (a["attack"] == attack)].rename(columns={"target": "unit"})

    def _pooled(self, label: tuple, attack: str, key: str = "tpr_at_1pct") -> pd.DataFrame:
        lo = self.low
        return lo[(lo["group_id"] == self.ids[label]) & (lo["attack"] == attack) & (lo["level"] == key)]

    # group - reference
    def acc(self, label: tuple, ref: tuple, metric: str) -> dict[str, float]:
        return paired_seed_delta(self._runs(label), self._runs(ref), metric)

    def leak(self, label: tuple, ref: tuple, attack: str, metric: str = "auc") -> dict[str, float]:
        return paired_seed_delta(self._targets(label, attack), self._targets(ref, attack), metric)

    def pooled(self, label: tuple, ref: tuple, attack: str) -> dict[str, float]:
        g, r = self._pooled(label, attack), self._pooled(ref, attack)
        m = g[["seed", "tpr"]].merge(r[["seed", "tpr"]], on="seed", suffixes=("_g", "_r"))
        return t_interval((m["tpr_g"] - m["tpr_r"]).to_numpy(dtype=float))

    def per_seed(self, label: tuple, ref: tuple, what: str, attack: str | None = None) -> pd.Series:
        """ref - label per seed (a cost or a reduction: positive = lower in `label`), paired as above."""
        if attack is None:
            a, b = self._runs(label), self._runs(ref)
        else:
            a, b = self._targets(label, attack), self._targets(ref, attack)
        m = b[["seed", "unit", what]].merge(a[["seed", "unit", what]], on=["seed", "unit"], suffixes=("_r", "_g"))
        return (m[f"{what}_r"] - m[f"{what}_g"]).groupby(m["seed"]).mean()

    def equal_leakage(self, point: tuple, curve: list[tuple], ref: tuple, attack: str) -> dict[str, float]:
        """Robust cost of the tau = 0 curve (`curve`: lambda 0 = `ref`, then DeMem at growing lambda),
        interpolated at the leakage reduction `point` reaches, minus `point`'s own robust cost; per
        seed, then a t interval across seeds. Positive: `point` keeps more robust accuracy than tau = 0
        does for the same leakage reduction."""
        leak = {k: self.per_seed(k, ref, "auc", attack) for k in [point, *curve]}
        cost = {k: self.per_seed(k, ref, ROBUST_ACC) for k in [point, *curve]}
        gains = []
        for seed in leak[point].index:
            xs = np.array([0.0] + [leak[k][seed] for k in curve])
            ys = np.array([0.0] + [cost[k][seed] for k in curve])
            order = np.argsort(xs)
            x = leak[point][seed]
            inside = xs.min() <= x <= xs.max()
            gains.append(np.interp(x, xs[order], ys[order]) - cost[point][seed] if inside else np.nan)
        return t_interval(np.array(gains, dtype=float))

    def levels(self, label: tuple) -> list[str]:
        runs = self._runs(label)
        cells = [level(seed_level(runs, NATURAL_ACC)), level(seed_level(runs, ROBUST_ACC))]
        for attack in ATTACKS.values():
            cells.append(level(seed_level(self._targets(label, attack), "auc")))
            cells.append(level(seed_level(self._pooled(label, attack), "tpr")))
        return cells

    def contrast_row(self, label: tuple, ref: tuple) -> list[str]:
        cells = [fmt(self.acc(label, ref, NATURAL_ACC)), fmt(self.acc(label, ref, ROBUST_ACC))]
        for attack in ATTACKS.values():
            cells += [fmt(self.leak(label, ref, attack)), fmt(self.pooled(label, ref, attack))]
        return cells

    def membins(self, label: tuple, ref: tuple) -> list[list[str]]:
        """Per memorization bin of the reference's models: samples per seed, the reference's membership
        signal gap (mean logit confidence IN - OUT), and label - ref held-out accuracy."""
        s = self.samples
        ref_s = s[s["group_id"] == self.ids[ref]]
        grp_s = s[s["group_id"] == self.ids[label]][["seed", "sample_id", "heldout_acc"]]
        m = ref_s.merge(grp_s, on=["seed", "sample_id"], suffixes=("_ref", "_grp"))
        m["gap"] = m["phi_in_mean"] - m["phi_out_mean"]
        rows = []
        for lo, hi, label in MEM_BINS:
            b = m[(m["memorization"] > lo) & (m["memorization"] <= hi)]
            per_seed = b.groupby("seed").agg(
                n=("sample_id", "size"),
                gap=("gap", "mean"),
                d=("heldout_acc_grp", "mean"),
                r=("heldout_acc_ref", "mean"),
            )
            per_seed["d"] = per_seed["d"] - per_seed["r"]
            if per_seed.empty:
                rows.append([label, "0", "-", "-", "-"])
                continue
            rows.append(
                [
                    label,
                    f"{per_seed['n'].mean():.0f}",
                    level(t_interval(per_seed["r"].to_numpy()), 100),
                    level(t_interval(per_seed["gap"].to_numpy()), 1, 2),
                    fmt(t_interval(per_seed["d"].to_numpy())),
                ]
            )
        return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


LEVEL_HEADER = ["group", "natural %", "robust %", "LiRA AUC %", "LiRA TPR@1% %", "RMIA AUC %", "RMIA TPR@1% %"]
DELTA_HEADER = [
    "group - reference",
    "Δ natural",
    "Δ robust",
    "Δ LiRA AUC",
    "Δ LiRA TPR@1%",
    "Δ RMIA AUC",
    "Δ RMIA TPR@1%",
]


def report(root: str | Path) -> str:
    s = Study(root)
    out = [
        f"n = {s.n_seeds} seeds (training draws). Levels: mean ± 95% t half-width across seeds. "
        "Differences: group - reference in percentage points, paired, [95% t interval across seeds]; "
        "* = the interval excludes 0. TPR@1% is pooled over the audited targets of a seed.",
        "",
        "### Every group",
        "",
        table(LEVEL_HEADER, [[name(key), *s.levels(key)] for key in s.ids]),
    ]
    contrasts = {
        "Claim 1: adversarial training vs standard": [(x, STANDARD) for x in (PGD_AT, TRADES, AWP)],
        "Claim 2: DP-SGD vs standard": [(DP, STANDARD)],
        "Claim 3: DeMem vs the same method at lambda 0": [(demem(PGD_AT, lam), PGD_AT) for lam in (0.2, 0.4, 0.6)]
        + [(demem(TRADES, 0.4), TRADES), (demem(AWP, 0.4), AWP)],
        "Threshold: PGD-AT lambda 0.4, tau 0.5 / 0.9": [(demem(PGD_AT, 0.4, t), PGD_AT) for t in (0.5, 0.9)]
        + [(demem(PGD_AT, 0.4, t), demem(PGD_AT, 0.4)) for t in (0.5, 0.9)],
    }
    for title, pairs in contrasts.items():
        rows = [[f"{name(g)} - {name(r)}", *s.contrast_row(g, r)] for g, r in pairs if s.has(g) and s.has(r)]
        out += ["", f"### {title}", "", table(DELTA_HEADER, rows)]
    curve = [demem(PGD_AT, lam) for lam in (0.2, 0.4, 0.6)]
    points = [demem(PGD_AT, 0.4, t) for t in (0.5, 0.9)]
    if all(s.has(k) for k in [PGD_AT, *curve, *points]):
        rows = [
            [name(p), *(fmt(s.equal_leakage(p, curve, PGD_AT, attack)) for attack in ATTACKS.values())] for p in points
        ]
        out += [
            "",
            "### Threshold at equal leakage reduction",
            "",
            "Robust accuracy kept (points) against tau = 0 at the same AUC reduction: the tau = 0 curve's robust "
            "cost (lambda 0, 0.2, 0.4, 0.6, interpolated per seed at the point's AUC reduction) minus the "
            "point's own; positive = the threshold keeps more robust accuracy. n/a in a seed whose point lies "
            "outside the curve's range.",
            "",
            table(["point", *(f"{a} (AUC)" for a in ATTACKS)], rows),
        ]
    if s.has(DP) and s.has(STANDARD):
        out += [
            "",
            "### Claim 2 by memorization (bins of the standard models' memorization, per seed)",
            "",
            table(
                ["memorization", "samples / seed", "standard held-out acc %", "standard signal gap", "Δ acc DP - std"],
                s.membins(DP, STANDARD),
            ),
        ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python docs/study.py EXPERIMENT_DIR")
    print(report(sys.argv[1]), end="")
