"""The numbers of docs/results.md (the second study, issue 26), from its three runs:

    .venv/bin/python docs/study2.py --a docs/study2/data/study2-fashion-s* \\
        --b docs/study2/data/study2-defences-s* --c docs/study2/data/study2-fashion-repeat-s* > study2_tables.md

Each run may come in pieces (`demem run SPEC --seeds 3`, one or a few seeds each, as a session allows);
the pieces of a run are joined here as `demem merge` joins them. docs/study2/data/ holds the tables of
every piece the page reports (spec.yaml, meta.json and the Parquet tables `demem` collected).

Run A (study2_fashion.yaml, seeds 0-4) answers questions 1-3, run B (study2_defences.yaml, the same
seeds and pools) questions 4 and 5, run C (study2_fashion_repeat.yaml, seeds 5-9) repeats A.

Every comparison is `group - reference`, paired: accuracy per (seed, model index), the same keep row
and so the same training half; leakage per (seed, audited target). Differences are averaged within
each seed, and the 95% t interval is across seeds (n = seeds: the training draws, the unit of
replication). A '*' marks an interval that excludes 0. Values are in points (x 100).

The headline attack is chosen without peeking: the attack with the highest mean AUC of the three
undefended 60-epoch groups (standard, PGD-AT, TRADES) on run A's selection seeds (0, 2, 4). Run A's
differences under it are reported on its other seeds (1, 3); run C reports it on all of its seeds,
chosen before C was looked at. Every other attack is shown beside it, on every seed, as exploration.

Each group's own strongest attack (`Study.strongest`, as `demem summarize` chooses it: the highest
mean AUC against that group on the selection seeds) was added after run A's seeds 0-2 had run and
before any of run C had: the pooled headline choice above lets the undefended models' weakness
under adversarial queries pick a clean attack, which is not the strongest against any
adversarially trained group. Questions 1 and 2 then also report each group under its own strongest
attack and both under the reference's; on run A this is exploratory (its seeds 0 and 2 were
seen), on run C, with run A's choices, confirmatory.

Runs that share a group (the same config, hence the same group id: run B retrains run A's PGD-AT on
the same pools) are joined on it; a (group, seed, model) present in two runs is the same model
trained twice, and the first run's copy is kept. `reproduced` reports how closely they agree.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from demem.stats import excludes_zero, paired_seed_delta, seed_level, t_interval
from orchestrator.collect import load_tables
from orchestrator.columns import NATURAL_ACC, ROBUST_ACC
from orchestrator.leakage import strongest
from orchestrator.plots import save

# The study's groups, by the labels `demem run` gives the specs' points.
STD10, PGD10, TRADES10 = "method=standard epochs=10", "method=pgd_at epochs=10", "method=trades epochs=10"
STD, PGD, TRADES = "method=standard", "method=pgd_at", "method=trades"
TAU = "method=pgd_at lambda=0.4 threshold=0.5"
TRADES_DM = "method=trades lambda=0.4"
AWP, AWP_DM = "method=pgd_at method.awp_gamma=0.01", "method=pgd_at method.awp_gamma=0.01 lambda=0.4"
TRADES_AWP = "method=trades method.awp_gamma=0.005 method.awp_warmup=3"
LAMBDAS = (0.2, 0.4, 0.6)
REFERENCES = (STD, PGD, TRADES)  # whose leakage chooses the headline attack
SELECT = (0, 2, 4)  # run A's selection seeds


def dm(lam: float) -> str:
    return f"method=pgd_at lambda={lam:g}"


def dp(noise: float) -> str:
    return f"method=dp_pgd_at dp.noise_multiplier={noise:g} dp.max_grad_norm=1"


def relax(alpha: float) -> str:
    return f"method=relaxloss_at method.beta={alpha:g}"


DEFENCES = (dp(0.5), dp(1.0), relax(0.7), relax(1.0))

NAMES = {
    STD10: "standard (10 ep)",
    PGD10: "PGD-AT (10 ep)",
    TRADES10: "TRADES (10 ep)",
    STD: "standard",
    PGD: "PGD-AT",
    TRADES: "TRADES",
    TAU: "PGD-AT + DeMem λ=0.4 τ=0.5",
    TRADES_DM: "TRADES + DeMem λ=0.4",
    AWP: "PGD-AT + AWP γ=0.01",
    AWP_DM: "PGD-AT + AWP + DeMem λ=0.4",
    TRADES_AWP: "TRADES + AWP γ=0.005 (3 warm-up ep)",
    **{dm(lam): f"PGD-AT + DeMem λ={lam:g}" for lam in LAMBDAS},
    **{dp(n): f"DP-PGD-AT σ={n:g}" for n in (0.5, 1.0)},
    **{relax(a): f"PGD-AT + RelaxLoss α={a:g}" for a in (0.7, 1.0)},
}


def name(label: str) -> str:
    return NAMES.get(label, label)


def fmt(ci: dict[str, float], scale: float = 100.0) -> str:
    """'mean [lo, hi]' in points; '*' when the interval excludes 0; 'n/a' when undefined."""
    if not np.isfinite(ci.get("mean", np.nan)):
        return "n/a"
    if not np.isfinite(ci.get("lo", np.nan)):
        return f"{ci['mean'] * scale:+.1f} (n={ci['n']})"
    star = "*" if excludes_zero(ci) else ""
    return f"{ci['mean'] * scale:+.1f} [{ci['lo'] * scale:+.1f}, {ci['hi'] * scale:+.1f}]{star}"


def level(ci: dict[str, float], scale: float = 100.0) -> str:
    if not np.isfinite(ci.get("mean", np.nan)):
        return "n/a"
    if not np.isfinite(ci.get("lo", np.nan)):
        return f"{ci['mean'] * scale:.1f}"
    return f"{ci['mean'] * scale:.1f} ± {(ci['hi'] - ci['mean']) * scale:.1f}"


def level_header(attack: str) -> list[str]:
    gaps = ["train natural", "train robust", "natural gap", "robust gap"]
    return ["group", "natural", "robust", *gaps, f"AUC {attack}"]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


class Study:
    """The joined tables of one or more runs, looked up by group label."""

    def __init__(self, *roots: str | Path) -> None:
        runs, audits, self.copies = [], [], []
        for root in roots:
            t = load_tables(Path(root))
            r, a = t.runs[t.runs["status"] == "done"], t.audits
            if runs:
                seen = pd.concat(runs)[["group_id", "seed", "model_index"]]
                key = r[["group_id", "seed", "model_index"]].merge(seen, how="left", indicator=True)["_merge"]
                self.copies.append(r[(key == "both").to_numpy()])
                r = r[(key == "left_only").to_numpy()]
                have = pd.concat(audits)[["group_id", "seed"]].drop_duplicates()
                akey = a[["group_id", "seed"]].merge(have, how="left", indicator=True)["_merge"]
                a = a[(akey == "left_only").to_numpy()]
            runs.append(r)
            audits.append(a)
        self.runs, self.audits = pd.concat(runs, ignore_index=True), pd.concat(audits, ignore_index=True)
        self.ids = dict(self.runs.groupby("group_label", sort=False)["group_id"].first())
        self.attacks = list(dict.fromkeys(self.audits["attack"]))

    def has(self, *labels: str) -> bool:
        return all(label in self.ids for label in labels)

    def seeds(self, label: str) -> list[int]:
        return sorted(self.runs.loc[self.runs["group_id"] == self.ids[label], "seed"].unique())

    def _runs(self, label: str) -> pd.DataFrame:
        return self.runs[self.runs["group_id"] == self.ids[label]].rename(columns={"model_index": "unit"})

    def _targets(self, label: str, attack: str, seeds=None) -> pd.DataFrame:
        a = self.audits
        a = a[(a["group_id"] == self.ids[label]) & (a["attack"] == attack)]
        if seeds is not None:
            a = a[a["seed"].isin(seeds)]
        return a.rename(columns={"target": "unit"})

    # group - reference
    def leak(self, label: str, ref: str, attack: str, seeds=None) -> dict[str, float]:
        return _minus(paired_seed_delta(self._targets(ref, attack, seeds), self._targets(label, attack, seeds), "auc"))

    def per_seed(self, label: str, ref: str, attack: str | None = None) -> pd.Series:
        """ref - label per seed (a reduction or cost: positive = lower in `label`): robust accuracy
        per (seed, model), or `attack`'s AUC per (seed, target)."""
        if attack is None:
            a, b, what = self._runs(label), self._runs(ref), ROBUST_ACC
        else:
            a, b, what = self._targets(label, attack), self._targets(ref, attack), "auc"
        m = b[["seed", "unit", what]].merge(a[["seed", "unit", what]], on=["seed", "unit"], suffixes=("_r", "_g"))
        return (m[f"{what}_r"] - m[f"{what}_g"]).groupby(m["seed"]).mean()

    def equal_leakage(self, point: str, curve: list[str], ref: str, attack: str) -> dict[str, float]:
        """Robust cost of the curve (`curve`: DeMem at growing lambda against `ref`, with lambda 0 at
        the origin) interpolated per seed at the leakage reduction `point` reaches, minus `point`'s
        own robust cost; t interval across seeds. Positive: `point` keeps more robust accuracy than
        the curve for the same leakage reduction. NaN in a seed where `point` lies outside the curve."""
        leak = {k: self.per_seed(k, ref, attack) for k in [point, *curve]}
        cost = {k: self.per_seed(k, ref) for k in [point, *curve]}
        gains = []
        for seed in leak[point].index:
            if any(seed not in leak[k].index or seed not in cost[k].index for k in curve):
                continue
            xs = np.array([0.0] + [leak[k][seed] for k in curve])
            ys = np.array([0.0] + [cost[k][seed] for k in curve])
            order = np.argsort(xs)
            x = leak[point][seed]
            inside = xs.min() <= x <= xs.max()
            gains.append(np.interp(x, xs[order], ys[order]) - cost[point][seed] if inside else np.nan)
        out = t_interval(np.array(gains, dtype=float))
        out["outside"] = int(np.isnan(gains).sum()) if gains else 0
        return out

    def levels(self, label: str, attack: str) -> list[str]:
        runs = self._runs(label)
        cols = (NATURAL_ACC, ROBUST_ACC, "train_natural_acc", "train_robust_acc", "natural_gap", "robust_gap")
        cells = [level(seed_level(runs, c)) if c in runs else "n/a" for c in cols]
        return [*cells, level(seed_level(self._targets(label, attack), "auc"))]

    def strongest(self, label: str) -> str:
        """The attack with the highest mean AUC against `label` on every other seed (`demem
        summarize`'s choice, `orchestrator.leakage.strongest`; on run A's seeds 0-4 that is SELECT)."""
        return str(strongest(self.audits[self.audits["group_id"] == self.ids[label]], {})["attack"].iloc[0])

    def leak_between(self, label: str, ref: str, attack: str, ref_attack: str, seeds=None) -> dict[str, float]:
        """`label`'s AUC under `attack` minus `ref`'s under `ref_attack`, paired per (seed, target)."""
        g, r = self._targets(label, attack, seeds), self._targets(ref, ref_attack, seeds)
        return _minus(paired_seed_delta(r, g, "auc"))

    def headline_attack(self) -> str:
        """The attack with the highest mean AUC of REFERENCES on the selection seeds."""
        refs = [self.ids[r] for r in REFERENCES if r in self.ids]
        a = self.audits[self.audits["group_id"].isin(refs) & self.audits["seed"].isin(SELECT)]
        per = a.groupby(["attack", "group_id", "seed"])["auc"].mean().groupby("attack").mean()
        return str(per.idxmax())

    def reproduced(self) -> str:
        """How closely the models trained twice (the same group, seed and model in two runs) agree."""
        if not self.copies or all(c.empty for c in self.copies):
            return "no model was trained in two runs"
        twice = pd.concat(self.copies)
        m = twice.merge(self.runs, on=["group_id", "seed", "model_index"], suffixes=("_2", "_1"))
        d = (m[f"{NATURAL_ACC}_2"] - m[f"{NATURAL_ACC}_1"]).abs()
        r = (m[f"{ROBUST_ACC}_2"] - m[f"{ROBUST_ACC}_1"]).abs()
        return (
            f"{len(m)} models were trained in two runs with the same config, seed and training half: "
            f"{int((d == 0).sum())} have the same natural accuracy, {int((r == 0).sum())} the same robust accuracy "
            f"(largest differences {100 * d.max():.1f} and {100 * r.max():.1f} points)"
        )


def _minus(ci: dict[str, float]) -> dict[str, float]:
    return {**ci, "mean": -ci["mean"], "lo": -ci["hi"], "hi": -ci["lo"]}


def _acc(s: Study, label: str, ref: str, metric: str) -> dict[str, float]:
    return _minus(paired_seed_delta(s._runs(ref), s._runs(label), metric))


def _report_seeds(s: Study, label: str) -> list[int] | None:
    """Run A's report seeds for the chosen attack (those not used to choose it); None: every seed
    of a run whose seeds were not used in the choice (the repeat)."""
    seeds = s.seeds(label)
    return [x for x in seeds if x not in SELECT] if set(SELECT) & set(seeds) else None


def strong_rows(s: Study, pairs: list[tuple[str, str]], strong: dict[str, str]) -> list[list[str]]:
    """Δ AUC under each group's own strongest attack, and under the reference's (`strong`: label ->
    attack, chosen on run A's selection seeds), on the report seeds."""
    return [
        [
            "Δ AUC, each group's strongest attack (report seeds)",
            *(fmt(s.leak_between(g, r, strong[g], strong[r], _report_seeds(s, g))) for g, r in pairs),
        ],
        [
            "Δ AUC, the reference's strongest attack (report seeds)",
            *(fmt(s.leak(g, r, strong[r], _report_seeds(s, g))) for g, r in pairs),
        ],
    ]


def strong_line(strong: dict[str, str]) -> str:
    return (
        f"Strongest attack per group, chosen on run A's seeds {', '.join(map(str, SELECT))}: "
        + "; ".join(f"{name(k)}: {v}" for k, v in strong.items())
        + "."
    )


def attack_rows(
    s: Study, pairs: list[tuple[str, str]], chosen: str, strong: dict[str, str] | None = None
) -> list[list[str]]:
    """One row per objective: Δ robust, Δ natural, then Δ AUC per attack (chosen first, on its report
    seeds, then under each group's and the reference's strongest attack where `strong` is given; the
    rest on every seed)."""
    rows = [
        ["Δ robust acc", *(fmt(_acc(s, g, r, ROBUST_ACC)) for g, r in pairs)],
        ["Δ natural acc", *(fmt(_acc(s, g, r, NATURAL_ACC)) for g, r in pairs)],
        [
            f"Δ AUC {chosen} (chosen; report seeds)",
            *(fmt(s.leak(g, r, chosen, _report_seeds(s, g))) for g, r in pairs),
        ],
    ]
    if strong is not None:
        rows += strong_rows(s, pairs, strong)
    rows += [[f"Δ AUC {a}", *(fmt(s.leak(g, r, a)) for g, r in pairs)] for a in s.attacks]
    return rows


Roots = str | Path | list[str | Path]


def _roots(r: Roots) -> list[str | Path]:
    return list(r) if isinstance(r, list | tuple) else [r]


def report(main: Roots, defences: Roots | None = None, repeat: Roots | None = None) -> str:
    """The page's tables; each run is one experiment directory or a list of its pieces."""
    a = Study(*_roots(main))
    chosen = a.headline_attack()
    strong = {k: a.strongest(k) for k in a.ids}
    out = [
        f"Run A: n = {len(a.seeds(PGD))} seeds. Levels: mean ± 95% t half-width across seeds, in points. "
        "Differences: group − reference, paired, [95% t interval across seeds]; * = the interval excludes 0.",
        "",
        f"Headline attack, chosen on run A's seeds {', '.join(map(str, SELECT))} from the undefended "
        f"60-epoch groups: **{chosen}**.",
        "",
        "### Every group (run A)",
        "",
        table(
            level_header(chosen),
            [[name(k), *a.levels(k, chosen)] for k in a.ids],
        ),
    ]
    q1 = [(g, r) for g, r in ((PGD10, STD10), (TRADES10, STD10), (PGD, STD), (TRADES, STD)) if a.has(g, r)]
    out += ["", "### Question 1: adversarial training − standard training", ""]
    out.append(table(["", *(f"{name(g)} − {name(r)}" for g, r in q1)], attack_rows(a, q1, chosen, strong)))
    q2 = [(dm(lam), PGD) for lam in LAMBDAS] + [(TRADES_DM, TRADES)]
    q2 = [(g, r) for g, r in q2 if a.has(g, r)]
    out += ["", "### Question 2: DeMem − the same method at λ = 0", ""]
    out.append(table(["", *(f"{name(g)} − {name(r)}" for g, r in q2)], attack_rows(a, q2, chosen, strong)))
    out += ["", strong_line(strong)]
    c = Study(*_roots(repeat)) if repeat is not None else None
    both = Study(*_roots(main), *_roots(repeat)) if repeat is not None else a
    curve = [dm(lam) for lam in LAMBDAS]
    if both.has(PGD, TAU, *curve):
        n = len(both.seeds(TAU))
        rows = [
            [
                f"{att}{' (chosen)' if att == chosen else ''}",
                fmt(both.leak(TAU, dm(0.4), att)),
                fmt(_acc(both, TAU, dm(0.4), ROBUST_ACC)),
                _gain(both.equal_leakage(TAU, curve, PGD, att)),
            ]
            for att in [chosen, *(x for x in ("rmia_online", "lira_online_fixed") if x != chosen)]
        ]
        out += [
            "",
            f"### Question 3: τ = 0.5 against τ = 0 (n = {n} seeds, runs A and C together)",
            "",
            table(
                ["attack", "Δ AUC vs τ=0 at λ=0.4", "Δ robust vs τ=0 at λ=0.4", "robust kept at equal leakage"], rows
            ),
            "",
            "Robust kept at equal leakage: the τ = 0 curve's robust cost (λ 0, 0.2, 0.4, 0.6 against PGD-AT), "
            "interpolated per seed at τ = 0.5's AUC reduction, minus τ = 0.5's own; positive = the threshold keeps "
            "more robust accuracy. Seeds where τ = 0.5 lies outside the curve are left out (counted).",
        ]
    if defences is not None:
        out += _defences(Study(*_roots(main), *_roots(defences)), chosen, curve)
    if c is not None:
        out += _repeat(a, c, chosen, q1 + q2, strong)
    return "\n".join(out) + "\n"


def _gain(ci: dict[str, float]) -> str:
    text = fmt(ci)
    return text + (f" ({ci['outside']} seed(s) outside the curve)" if ci.get("outside") else "")


def _defences(s: Study, chosen: str, curve: list[str]) -> list[str]:
    out = ["", "### Question 4: defences on PGD-AT's pools", "", s.reproduced(), ""]
    rows = []
    for d in [*curve, *DEFENCES]:
        if not s.has(d, PGD):
            continue
        rows.append(
            [
                name(d),
                fmt(s.leak(d, PGD, chosen, _report_seeds(s, d))),
                fmt(s.leak(d, PGD, chosen)),
                fmt(_acc(s, d, PGD, ROBUST_ACC)),
                fmt(_acc(s, d, PGD, NATURAL_ACC)),
                _gain(s.equal_leakage(d, curve, PGD, chosen)) if d not in curve and s.has(*curve) else "—",
            ]
        )
    out.append(
        table(
            [
                "defence − PGD-AT",
                f"Δ AUC {chosen} (report seeds)",
                f"Δ AUC {chosen} (every seed)",
                "Δ robust",
                "Δ natural",
                "robust kept vs DeMem at equal leakage",
            ],
            rows,
        )
    )
    out += [
        "",
        "Robust kept vs DeMem: DeMem's robust cost interpolated per seed at the defence's AUC reduction "
        "(the chosen attack, every seed), minus the defence's own; positive = the defence keeps more robust "
        "accuracy than DeMem for the same leakage reduction.",
    ]
    end = curve[-1]  # a defence beyond the curve is compared with its strongest point, paired
    beyond = [d for d in DEFENCES if s.has(d, end)]
    if beyond:
        out += [
            "",
            table(
                [f"defence − {name(end)}", f"Δ AUC {chosen} (every seed)", "Δ robust", "Δ natural"],
                [
                    [
                        name(d),
                        fmt(s.leak(d, end, chosen)),
                        fmt(_acc(s, d, end, ROBUST_ACC)),
                        fmt(_acc(s, d, end, NATURAL_ACC)),
                    ]
                    for d in beyond
                ],
            ),
            "",
            f"The same pools and training halves; lower AUC and higher robust accuracy than {name(end)} "
            "(both intervals excluding 0) means the defence beats DeMem's strongest point on both axes.",
        ]
    q5 = [(g, r) for g, r in ((AWP, PGD), (AWP_DM, AWP), (TRADES_AWP, TRADES)) if s.has(g, r)]
    if q5:
        out += ["", "### Question 5: AWP", ""]
        out.append(
            table(
                level_header(chosen),
                [[name(k), *s.levels(k, chosen)] for k in (PGD, TRADES, AWP, AWP_DM, TRADES_AWP) if s.has(k)],
            )
        )
        out += ["", table(["", *(f"{name(g)} − {name(r)}" for g, r in q5)], attack_rows(s, q5, chosen))]
    return out


# Question 4's figure: the DeMem curve and each other defence, by family.
STYLE = {"DeMem": ("o", "C0"), "DP": ("^", "C3"), "RelaxLoss": ("D", "C2")}


def _family(label: str) -> str:
    return "DP" if label in (dp(0.5), dp(1.0)) else "RelaxLoss" if label in (relax(0.7), relax(1.0)) else "DeMem"


def tradeoff(s: Study, chosen: str) -> pd.DataFrame:
    """Question 4's figure, as data: per defence on PGD-AT's pools, Δ AUC under `chosen` and Δ robust
    accuracy against PGD-AT (defence − PGD-AT, paired, every seed), each mean with its 95% t interval
    across seeds, in points. DeMem's curve is its λ points in order."""
    rows = []
    for d in [*(dm(lam) for lam in LAMBDAS), *DEFENCES]:
        if not s.has(d, PGD):
            continue
        leak, robust = s.leak(d, PGD, chosen), _acc(s, d, PGD, ROBUST_ACC)
        row = {"label": d, "name": name(d), "family": _family(d), "n": min(leak["n"], robust["n"])}
        for what, ci in (("auc", leak), ("robust", robust)):
            row.update({f"{what}_{k}": 100 * ci[k] for k in ("mean", "lo", "hi")})
        rows.append(row)
    return pd.DataFrame(rows)


def tradeoff_figure(t: pd.DataFrame, chosen: str) -> Figure:
    """Two panels of the same points (every defence; the region of DeMem's curve), each with its 95%
    t intervals across seeds on both axes; DeMem's points joined from PGD-AT at the origin."""
    fig = Figure(figsize=(12, 5), dpi=120)
    axes = fig.subplots(1, 2)
    demem, near = t[t["family"] == "DeMem"], t[t["family"] != "DP"]
    for ax in axes:
        ax.plot([0, *demem["auc_mean"]], [0, *demem["robust_mean"]], color="C0", lw=1, alpha=0.6, zorder=0)
        ax.plot([0], [0], "s", color="0.45", ms=8, label="PGD-AT (the reference)")
        for family, part in t.groupby("family", sort=False):
            marker, color = STYLE[family]
            ax.errorbar(
                part["auc_mean"],
                part["robust_mean"],
                xerr=[part["auc_mean"] - part["auc_lo"], part["auc_hi"] - part["auc_mean"]],
                yerr=[part["robust_mean"] - part["robust_lo"], part["robust_hi"] - part["robust_mean"]],
                fmt=marker,
                color=color,
                capsize=3,
                elinewidth=1,
                label=family,
            )
        for _, r in (t if ax is axes[1] else t[t["family"] == "DP"]).iterrows():
            text = r["name"].removeprefix("PGD-AT + ")
            ax.annotate(text, (r["auc_mean"], r["robust_mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.axvline(0, color="0.6", lw=0.8)
        ax.grid(alpha=0.3)
        ax.set_xlabel(f"Δ AUC of {chosen} against PGD-AT (points; left = less leakage)")
        ax.set_ylabel("Δ robust accuracy against PGD-AT (points)")
    lo = near[["auc_lo", "robust_lo"]].min()
    axes[1].set_xlim(min(lo["auc_lo"], 0) - 1, 1.5)
    axes[1].set_ylim(min(lo["robust_lo"], 0) - 1, max(near["robust_hi"].max(), 0) + 1)
    axes[0].set_title("every defence")
    axes[1].set_title("near DeMem's curve (DP is off this panel)")
    axes[0].legend(fontsize=8, loc="lower right")
    n = t.groupby("family", sort=False)["n"].min()
    fig.suptitle(
        "Defences on PGD-AT's pools, paired: defence − PGD-AT, 95% t intervals across seeds (n = "
        + ", ".join(f"{family} {int(k)}" for family, k in n.items())
        + ")\nabove DeMem's line: more robust accuracy kept for the same leakage reduction",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def _agree(x: dict[str, float], y: dict[str, float]) -> str:
    if not (np.isfinite(x["mean"]) and np.isfinite(y["mean"])):
        return "n/a"
    sign = np.sign(x["mean"]) == np.sign(y["mean"])
    sig = excludes_zero(x) == excludes_zero(y)
    return "yes" if sign and sig else ("sign only" if sign else "no")


def _repeat(a: Study, c: Study, chosen: str, pairs: list[tuple[str, str]], strong: dict[str, str]) -> list[str]:
    rows = []
    for g, r in pairs:
        if not c.has(g, r):
            continue
        for what, fa, fc in (
            ("Δ robust", _acc(a, g, r, ROBUST_ACC), _acc(c, g, r, ROBUST_ACC)),
            ("Δ natural", _acc(a, g, r, NATURAL_ACC), _acc(c, g, r, NATURAL_ACC)),
            (f"Δ AUC {chosen}", a.leak(g, r, chosen), c.leak(g, r, chosen)),
            (
                "Δ AUC, each group's strongest",
                a.leak_between(g, r, strong[g], strong[r]),
                c.leak_between(g, r, strong[g], strong[r]),
            ),
            (f"Δ AUC, the reference's strongest ({strong[r]})", a.leak(g, r, strong[r]), c.leak(g, r, strong[r])),
        ):
            rows.append([f"{name(g)} − {name(r)}", what, fmt(fa), fmt(fc), _agree(fa, fc)])
    return [
        "",
        f"### Question 6: run A (seeds {', '.join(map(str, a.seeds(PGD)))}) beside run C (seeds "
        f"{', '.join(map(str, c.seeds(PGD)))})",
        "",
        table(["comparison", "objective", "run A", "run C", "agree (sign and significance)"], rows),
        "",
        f"Both columns use {chosen}, chosen on run A's seeds {', '.join(map(str, SELECT))}, on every seed of "
        "the run (run A's column includes its selection seeds; run C's does not depend on the choice).",
    ]


BEGIN, END = "<!-- begin: the tables of docs/study2.py -->", "<!-- end: the tables of docs/study2.py -->"


def splice(page: str | Path, tables: str) -> None:
    """Put `tables` between the page's BEGIN and END lines, so the page's tables are the script's."""
    text = Path(page).read_text()
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not (sep and sep2):
        raise SystemExit(f"{page}: no {BEGIN} ... {END} block to put the tables in")
    Path(page).write_text(f"{head}{BEGIN}\n{tables}{END}{tail}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="the tables of docs/results.md from the study's runs")
    p.add_argument("--a", nargs="+", required=True, help="run A: its experiment directory or its pieces")
    p.add_argument("--b", nargs="+", default=None, help="run B (defences, AWP)")
    p.add_argument("--c", nargs="+", default=None, help="run C (the repeat)")
    p.add_argument("--into", default=None, metavar="PAGE", help="write them into PAGE's tables block, not stdout")
    p.add_argument("--figure", default=None, metavar="PNG", help="with --b: draw question 4's figure into PNG")
    args = p.parse_args()
    if args.figure and not args.b:
        p.error("--figure draws run B's defences: give --b too")
    tables = report(args.a, args.b, args.c)
    splice(args.into, tables) if args.into else print(tables, end="")
    if args.figure:
        s = Study(*args.a, *args.b)
        chosen = Study(*args.a).headline_attack()
        save(tradeoff_figure(tradeoff(s, chosen), chosen), Path(args.figure))
