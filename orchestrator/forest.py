"""Every paired difference of a summary from its reference, and the forest plot that shows them.

    comparisons   a defended group against its undefended baseline (`summarize`'s baseline_id), and
                  each undefended training method against standard training on the same pools and
                  settings (claim 1: does adversarial training leak more?)
    objectives    robust accuracy, natural accuracy, and leakage under one attack per attack family
                  (LiRA, RMIA, threshold, boundary, ... as the attacks declare it) and query kind
                  (clean inputs, adversarial queries, boundary distance): a robust model may leak
                  less than its baseline to the clean member of a family and more to the
                  adversarial one, and a single attack per family would show only one of the two

Each difference is `group - reference`, paired per (seed, model index) for the accuracies and per
(seed, audited target) for leakage, averaged within each seed, with a 95% t interval across the
seeds (n = seeds; `demem.stats.paired_seed_delta`). Accuracies and leakage are in points (x 100).

The attack of a (family, query kind) is chosen without peeking, as `leakage.strongest` chooses: its
attack with the highest mean leakage over the reference groups on the SELECTION half of the seeds (every
other seed in sorted order: 0th, 2nd, ...); its differences are then reported on the other half only,
so the choice never sees the numbers it is reported with. An independent repeat may take the choice
of an earlier experiment (`chosen=`: `demem summarize --forest-from EXPERIMENT`); its differences are
then reported on all of its own seeds.

Ray-free; reads the tables `orchestrator.collect` writes and the summary frame of
`summarize.summarize_groups`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from demem.stats import excludes_zero, paired_seed_delta
from orchestrator.columns import LEAKAGE_LABELS, NATURAL_ACC, ROBUST_ACC
from orchestrator.layout import ExperimentDir

FILE = "forest.csv"
SCALE = 100.0  # fractions and AUCs as points
ACCURACY = (("robust", ROBUST_ACC), ("natural", NATURAL_ACC))
_COLUMNS = [
    "comparison",
    "kind",
    "group_id",
    "group_label",
    "reference_id",
    "reference_label",
    "objective",
    "family",
    "query",
    "attack",
    "metric",
    "chosen",
    "mean",
    "lo",
    "hi",
    "n",
    "pairs",
    "excludes_zero",
]


def comparisons(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(kind, group_id, reference_id) of each paired comparison the summary `df` allows.

    "defence": a group and its matching undefended baseline. "training": an undefended method other
    than standard training against the standard group of the same pools whose other settings, the
    method's own aside (TRADES's beta, AWP, the training attack), are the same. Comparisons of
    methods with standard training come first."""
    defences = [
        ("defence", r["group_id"], r["baseline_id"])
        for _, r in df.iterrows()
        if r["baseline_id"] is not None and r["baseline_id"] == r["baseline_id"] and r["baseline_id"] != r["group_id"]
    ]
    out = []
    base = df[df["is_baseline"]]
    standard = base[base["method"] == "standard"]
    for _, r in base[base["method"] != "standard"].iterrows():
        ref = standard[
            (standard["pool_key"] == r["pool_key"]) & (standard["setting"].map(_shared) == _shared(r["setting"]))
        ]
        if len(ref):
            out.append(("training", r["group_id"], ref["group_id"].iloc[0]))
    return out + defences


# A training method's own keys: its settings and its training attack (TRADES starts its attack
# from a Gaussian, PGD-AT from a uniform draw; standard training has none).
_OWN = ("config.method.", "config.attack.")


def _shared(setting: str) -> str:
    """A group's setting (`summarize._setting`) without the training method's own keys."""
    return "|".join(p for p in str(setting).split("|") if not p.startswith(_OWN))


def _halves(seeds) -> tuple[set, set]:
    seeds = sorted(seeds)
    return set(seeds[0::2]), set(seeds[1::2])


# How each query kind reads in a heading (`collect.load_tables` reads older audits as all clean).
QUERIES = {"clean": "clean query", "adversarial": "adversarial query", "boundary": "boundary distance"}
KINDS = {"family", "query"}


def choose_family_attacks(audits: pd.DataFrame, references: list[str], metric: str) -> dict[tuple[str, str], str]:
    """{(family, query kind): attack}: per attack family and query kind, the attack with the highest
    mean `metric` over the reference groups' seed means on the selection half of the seeds."""
    if audits.empty or not KINDS <= set(audits):
        return {}
    a = audits[audits["group_id"].isin(references)]
    a = a[np.isfinite(pd.to_numeric(a[metric], errors="coerce").to_numpy(dtype=float))]
    if a.empty:
        return {}
    select, _ = _halves(a["seed"].unique()) if a["seed"].nunique() >= 2 else (set(a["seed"]), set())
    a = a[a["seed"].isin(select)]
    keys = ["family", "query", "attack"]
    per = a.groupby([*keys, "group_id", "seed"])[metric].mean().groupby(keys).mean()
    return {key: str(s.droplevel([0, 1]).idxmax()) for key, s in per.groupby(level=[0, 1])}


MAX_BYTES = 16 << 20  # a forest table of 1,000 comparisons is under 1 MiB


def chosen_from(previous: str | Path) -> list[str]:
    """The attacks that an earlier experiment's summary chose (its summary/forest.csv), sorted.

    The directory may be someone else's: the table must be a plain file of at most MAX_BYTES with
    the columns demem writes; its names only select among the attacks this experiment ran, whose own
    audits say each one's family and query kind."""
    path = ExperimentDir(Path(previous)).summary / FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no forest table; run `demem summarize {previous}` first")
    if path.stat().st_size > MAX_BYTES:
        raise ValueError(f"{path}: larger than {MAX_BYTES >> 20} MiB, not a forest table demem writes")
    f = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"objective", "family", "attack"} <= set(f.columns):
        raise ValueError(f"{path}: not a forest table (it needs the columns objective, family and attack)")
    f = f[f["objective"].str.startswith("leakage")]
    return sorted(set(f["attack"]))


def _minus(ci: dict[str, float]) -> dict[str, float]:
    """group - reference from paired_seed_delta's reference - group, in points."""
    return {**ci, "mean": -ci["mean"] * SCALE, "lo": -ci["hi"] * SCALE, "hi": -ci["lo"] * SCALE}


def _units(frame: pd.DataFrame, gid: str, unit: str, seeds: set | None = None) -> pd.DataFrame:
    f = frame.loc[frame["group_id"] == gid]
    if seeds is not None:
        f = f[f["seed"].isin(seeds)]
    return f.rename(columns={unit: "unit"})


def forest_table(
    df: pd.DataFrame, runs: pd.DataFrame, audits: pd.DataFrame, *, chosen: list[str] | None = None
) -> pd.DataFrame:
    """One row per (comparison, objective): group - reference with its interval across seeds.

    `chosen` (attack names, from an earlier experiment) fixes the attacks; then every seed reports.
    Otherwise they are chosen on the selection half and reported on the other half."""
    metric = str(df["leakage_metric"].iloc[0]) if len(df) else "auc"
    pairs = comparisons(df)
    labels = dict(zip(df["group_id"], df["group_label"]))
    done = runs[runs["status"] == "done"] if "status" in runs else runs
    if chosen is None:
        attacks = choose_family_attacks(audits, sorted({ref for _, _, ref in pairs}), metric)
        seeds = sorted(audits["seed"].unique()) if not audits.empty else []
        if len(seeds) >= 2:
            report = _halves(seeds)[1]
            how = "selected on seeds " + ", ".join(str(int(s)) for s in sorted(_halves(seeds)[0]))
        else:  # one draw: no interval either way
            report, how = None, "chosen and reported on the one seed (no interval)"
    else:
        have = KINDS <= set(audits) and not audits.empty
        kinds = audits.groupby("attack")[["family", "query"]].first() if have else pd.DataFrame()
        attacks = {(kinds.at[a, "family"], kinds.at[a, "query"]): a for a in chosen if a in kinds.index}
        report, how = None, "chosen by an earlier experiment"
    rows = []
    for kind, gid, ref in pairs:
        name = f"{labels[gid]} − {labels[ref]}"
        common = {
            "comparison": name,
            "kind": kind,
            "group_id": gid,
            "group_label": labels[gid],
            "reference_id": ref,
            "reference_label": labels[ref],
        }
        for objective, col in ACCURACY:
            ci = _minus(paired_seed_delta(_units(done, ref, "model_index"), _units(done, gid, "model_index"), col))
            rows.append(
                {
                    **common,
                    "objective": objective,
                    "family": "",
                    "query": "",
                    "attack": "",
                    "metric": col,
                    "chosen": "",
                    **ci,
                }
            )
        for (family, query), attack in sorted(attacks.items()):
            mine = audits[audits["attack"] == attack]
            ci = _minus(
                paired_seed_delta(_units(mine, ref, "target", report), _units(mine, gid, "target", report), metric)
            )
            rows.append(
                {
                    **common,
                    "objective": f"leakage: {family}, {QUERIES.get(query, query)}",
                    "family": family,
                    "query": query,
                    "attack": attack,
                    "metric": metric,
                    "chosen": how,
                    **ci,
                }
            )
    if not rows:
        return pd.DataFrame(columns=_COLUMNS)
    out = pd.DataFrame(rows)
    out["excludes_zero"] = [excludes_zero(r) for r in out[["lo", "hi"]].to_dict("records")]
    return out[_COLUMNS]


def forest_markdown(table: pd.DataFrame) -> list[str]:
    if table.empty:
        return []
    objectives = list(dict.fromkeys(table["objective"]))
    head = ["group − reference", *(_heading(table, o) for o in objectives)]
    lines = [
        "### Paired differences (forest plot)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for name, part in table.groupby("comparison", sort=False):
        by = part.set_index("objective")
        cells = [name.replace("|", "/"), *(_cell(by.loc[o]) if o in by.index else "—" for o in objectives)]
        lines.append("| " + " | ".join(cells) + " |")
    leak = table[table["objective"].str.startswith("leakage")]
    chosen = leak["chosen"].iloc[0] if len(leak) else ""
    lines += [
        "",
        "group − reference in points (× 100), paired per (seed, model) for accuracy and per (seed, target) for "
        "leakage, averaged within each seed; [95% t interval across seeds] (n = seeds); * = the interval "
        "excludes 0. Negative leakage: the group leaks less. Each family's attack per query kind is the one "
        f"with the highest leakage of the reference groups, {chosen}"
        + ("; its leakage differences are reported on the other seeds only." if "selected" in chosen else "."),
    ]
    return lines


def _heading(table: pd.DataFrame, objective: str) -> str:
    if not objective.startswith("leakage"):
        return f"Δ {objective} acc"
    row = table[table["objective"] == objective].iloc[0]
    return f"Δ {LEAKAGE_LABELS.get(row['metric'], row['metric'])}, {row['attack']} ({row['family']}, {row['query']})"


def _cell(r: pd.Series) -> str:
    if not np.isfinite(r["mean"]):
        return "n/a"
    if not np.isfinite(r["lo"]):
        return f"{r['mean']:+.1f} (n={int(r['n'])}, no interval)"
    return f"{r['mean']:+.1f} [{r['lo']:+.1f}, {r['hi']:+.1f}]{'*' if r['excludes_zero'] else ''} (n={int(r['n'])})"


# A query kind's marker and its offset within a comparison's row in a family's panel.
_MARKERS = {"clean": ("o", 0.2), "adversarial": ("^", 0.0), "boundary": ("s", -0.2)}


def _panels(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows): one panel per accuracy objective, then one per attack family holding each of
    its query kinds."""
    if table.empty:
        return [("robust", table)]
    out = []
    for objective in dict.fromkeys(table["objective"]):
        part = table[table["objective"] == objective]
        if not objective.startswith("leakage"):
            out.append((_heading(table, objective), part))
    leak = table[table["objective"].str.startswith("leakage")]
    for family in dict.fromkeys(leak["family"]):
        part = leak[leak["family"] == family]
        label = LEAKAGE_LABELS.get(part["metric"].iloc[0], part["metric"].iloc[0])
        out.append((f"Δ {label}, {family}", part))
    return out


def forest_plot(table: pd.DataFrame) -> Figure:
    """One row per comparison; one panel per accuracy objective and one per attack family, with a
    marker per query kind (legend: the attack behind each). The difference with its interval across
    seeds, a filled marker where the interval excludes 0, a line at 0."""
    panels = _panels(table)
    names = list(dict.fromkeys(table["comparison"])) if not table.empty else []
    fig = Figure(figsize=(2.8 * len(panels) + 3.2, 0.5 * max(len(names), 2) + 2.2), dpi=120)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    y = {n: len(names) - 1 - i for i, n in enumerate(names)}
    colors = {"training": "tab:red", "defence": "tab:blue"}
    for ax, (title, part) in zip(axes, panels):
        ax.axvline(0, color="0.4", lw=1)
        legend = {}
        for _, r in part.iterrows():
            marker, dy = _MARKERS.get(r["query"], ("D", 0.0)) if r["query"] else ("o", 0.0)
            if r["attack"]:
                legend[r["attack"]] = marker
            if not np.isfinite(r["mean"]):
                continue
            yy, color = y[r["comparison"]] + dy, colors.get(r["kind"], "k")
            if np.isfinite(r["lo"]):
                ax.plot([r["lo"], r["hi"]], [yy, yy], color=color, lw=1.6)
            ax.plot(r["mean"], yy, marker, color=color, mfc=color if r["excludes_zero"] else "white", ms=6)
        for attack, marker in legend.items():
            ax.plot([], [], marker, color="0.3", mfc="white", ls="none", label=attack)
        if legend:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("group − reference (points)", fontsize=8)
        ax.grid(alpha=0.3, axis="x")
        ax.tick_params(labelsize=8)
    axes[0].set_yticks(list(y.values()), list(y.keys()), fontsize=8)
    axes[0].set_ylim(-0.7, max(len(names), 1) - 0.3)
    if table.empty:
        axes[0].text(0.5, 0.5, "no paired comparison in this experiment", ha="center", transform=axes[0].transAxes)
    n = int(table["n"].max()) if not table.empty else 0
    fig.suptitle(
        "Paired differences from the reference, 95% t intervals across seeds (n ≤ "
        f"{n}; filled: excludes 0; red: method vs standard, blue: defence vs its baseline; "
        "markers: ○ clean query, △ adversarial query, □ boundary distance)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig
