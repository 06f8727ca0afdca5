"""The summary's figures (PNG): pareto, roc, membins, threshold_sweep.

Every function takes data, the per-group summary frame (`orchestrator.summarize.summarize_groups`)
and, where it needs them, the experiment's roc / membins tables, and returns a Figure; `all_figures`
builds them, the threshold sweep only where the DeMem groups differ in their threshold. Figures are
made with matplotlib's object-oriented API (`matplotlib.figure.Figure`), never pyplot: no backend is
chosen and no global figure registry is touched, so importing this module changes nothing for the
rest of the process.

Marker language, the same in every plot: an undefended baseline is a grey square, a DP group a
triangle, a DeMem group a circle; colour is the training method.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from demem.io import atomic_path
from demem.pareto import pareto_fronts
from orchestrator.columns import LEAKAGE_LABELS, ROBUST_ACC

DPI = 120


def _colors(methods) -> dict[str, str]:
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    return {m: cycle[i % len(cycle)] for i, m in enumerate(sorted(set(methods)))}


def _kind(row) -> str:
    if row["dp"]:
        return "dp"
    return "baseline" if row["lambda"] == 0 else "demem"


_MARKER = {"baseline": "s", "dp": "^", "demem": "o"}
_KIND_NAME = {"baseline": "undefended", "dp": "DP", "demem": "DeMem"}


def _err(df: pd.DataFrame, col: str) -> np.ndarray:
    """(2, n) asymmetric error bars from the interval; 0 where there is none (n = 1)."""
    mean = df[f"{col}_mean"].to_numpy(dtype=float)
    lo = df[f"{col}_lo"].to_numpy(dtype=float)
    hi = df[f"{col}_hi"].to_numpy(dtype=float)
    return np.nan_to_num(np.stack([mean - lo, hi - mean]), nan=0.0)


def _by_family(df: pd.DataFrame) -> pd.DataFrame:
    """Colour and group by the method family (`family`: the method, "+ AWP" when AWP is on), so PGD-AT
    with and without AWP are told apart; frames without the column keep the method."""
    return df.assign(method=df["family"]) if "family" in df.columns else df


def pareto_plot(df: pd.DataFrame) -> Figure:
    df = _by_family(df)
    leak = df["leakage_metric"].iloc[0]
    colors = _colors(df["method"])
    fig = Figure(figsize=(8, 6), dpi=DPI)
    ax = fig.subplots()
    for kind in ("baseline", "dp", "demem"):
        sub = df[df.apply(_kind, axis=1) == kind]
        for method, part in sub.groupby("method"):
            ax.errorbar(
                part["leakage_mean"],
                part[f"{ROBUST_ACC}_mean"],
                xerr=_err(part, "leakage"),
                yerr=_err(part, ROBUST_ACC),
                fmt=_MARKER[kind],
                ms=8 if kind != "demem" else 6,
                color="0.45" if kind == "baseline" else colors[method],
                mec=colors[method],
                mew=1.5,
                capsize=3,
                elinewidth=1,
                alpha=0.9,
                label=f"{method} ({_KIND_NAME[kind]})",
            )
    for _, r in df.iterrows():
        if _kind(r) == "demem":
            ax.annotate(
                f"λ={r['lambda']:g}, τ={r['threshold']:g}",
                (r["leakage_mean"], r[f"{ROBUST_ACC}_mean"]),
                textcoords="offset points",
                xytext=(6, 4),
                fontsize=8,
            )
        elif _kind(r) == "dp" and np.isfinite(r.get("epsilon_mean", np.nan)):
            ax.annotate(
                f"ε={r['epsilon_mean']:.2g}",
                (r["leakage_mean"], r[f"{ROBUST_ACC}_mean"]),
                textcoords="offset points",
                xytext=(6, 4),
                fontsize=8,
            )
    # The front on the two plotted objectives (the ranking's fronts also count natural accuracy).
    xy = df[["leakage_mean", f"{ROBUST_ACC}_mean"]].to_numpy(dtype=float)
    front = df[pareto_fronts(xy, [False, True]) == 0].sort_values("leakage_mean")
    if len(front) > 1:
        ax.step(
            front["leakage_mean"],
            front[f"{ROBUST_ACC}_mean"],
            where="post",
            color="k",
            lw=1,
            alpha=0.6,
            label="Pareto front (leakage, robust)",
            zorder=0,
        )
    ax.set_xlabel(f"membership leakage: {LEAKAGE_LABELS[leak]} of {df['attack'].iloc[0]} (lower is more private)")
    ax.set_ylabel("robust accuracy under PGD (fraction of held-out samples)")
    ax.set_title("Privacy-robustness trade-off (95% intervals)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def roc_plot(df: pd.DataFrame, roc: pd.DataFrame) -> Figure:
    attack = df["attack"].iloc[0]
    cycle = matplotlib.colormaps["tab10"].colors
    fig = Figure(figsize=(7, 6), dpi=DPI)
    ax = fig.subplots()
    sub = roc[roc["attack"] == attack] if not roc.empty else roc
    floor = 1.0  # down to 1e-4 or the smallest FPR the data resolve
    styles = {"baseline": "-", "dp": ":", "demem": "--"}
    for i, (_, r) in enumerate(df.iterrows()):
        curve = sub[sub["group_id"] == r["group_id"]] if not sub.empty else sub
        if curve.empty:
            continue
        # average the seeds' pooled curves on a common log grid
        grid = np.geomspace(max(curve["fpr"][curve["fpr"] > 0].min(), 1e-4), 1.0, 200)
        tprs = [np.interp(grid, c["fpr"].to_numpy(), c["tpr"].to_numpy()) for _, c in curve.groupby("seed")]
        floor = min(floor, grid[0] / 1.5)
        ax.plot(
            grid, np.mean(tprs, axis=0), styles[_kind(r)], color=cycle[i % len(cycle)], lw=1.4, label=r["group_label"]
        )
    ax.plot([1e-5, 1], [1e-5, 1], "--", color="0.5", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    floor = min(floor, 1e-2)
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1)
    ax.set_xlabel("false positive rate (log)")
    ax.set_ylabel("true positive rate (log)")
    ax.set_title(f"{attack} ROC per group\n(solid: undefended, dashed: DeMem, dotted: DP)", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def membins_plot(df: pd.DataFrame, membins: pd.DataFrame) -> Figure:
    """Per memorization bin (non-empty bins only): held-out accuracy and LiRA TPR at 1% FPR for the
    baselines, the DP groups and the best-ranked DeMem group per baseline."""
    df = _by_family(df)
    fig = Figure(figsize=(12, 5), dpi=DPI)
    ax1, ax2 = fig.subplots(1, 2)
    colors = _colors(df["method"])
    chosen = df[df.apply(_kind, axis=1).isin(["baseline", "dp"])]
    demem = df[df.apply(_kind, axis=1) == "demem"].sort_values("rank")
    chosen = pd.concat([chosen, demem.drop_duplicates("baseline_id").head(max(1, len(chosen)))])
    styles = {"baseline": "s-", "dp": "^:", "demem": "o--"}
    if not membins.empty:
        for _, r in chosen.iterrows():
            b = membins[(membins["group_id"] == r["group_id"]) & (membins["n"] > 0)]
            if b.empty:
                continue
            agg = b.groupby(["bin", "lo", "hi"], as_index=False)[["heldout_acc", "tpr_at_1pct"]].mean()
            x = np.where(agg["bin"] == 0, 0.0, (agg["lo"] + agg["hi"]) / 2)
            for ax, col in ((ax1, "heldout_acc"), (ax2, "tpr_at_1pct")):
                ax.plot(x, agg[col], styles[_kind(r)], color=colors[r["method"]], label=r["group_label"], ms=5)
    ax1.set_xlabel("memorization score of the sample (bin centre; 0 = never memorised)")
    ax1.set_ylabel("natural accuracy on the sample when held out")
    ax1.set_title("Who loses accuracy")
    ax2.set_xlabel("memorization score of the sample (bin centre)")
    ax2.set_ylabel("LiRA TPR at 1% FPR among the bin's members")
    ax2.set_title("Who is exposed")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.set_ylim(-0.02, 1.02)
    ax2.legend(fontsize=7, loc="best")
    fig.suptitle("Memorization bins: undefended (squares), DP (triangles), DeMem (circles)")
    fig.tight_layout()
    return fig


def threshold_sweep_plot(df: pd.DataFrame) -> Figure:
    df = _by_family(df)
    leak = df["leakage_metric"].iloc[0]
    fig = Figure(figsize=(12, 5), dpi=DPI)
    ax1, ax2 = fig.subplots(1, 2)
    colors = _colors(df["method"])
    demem = df[(df["lambda"] > 0) & ~df["dp"]]
    lambdas = sorted(set(demem["lambda"]))
    styles = ["o-", "s--", "^-.", "D:", "v-"]
    for (method, lam), part in demem.groupby(["method", "lambda"]):
        part = part.sort_values("threshold")
        style = styles[lambdas.index(lam) % len(styles)]
        for ax, col in ((ax1, "leakage"), (ax2, ROBUST_ACC)):
            ax.errorbar(
                part["threshold"],
                part[f"{col}_mean"],
                yerr=_err(part, col),
                fmt=style,
                capsize=3,
                color=colors[method],
                label=f"{method}, λ={lam:g}",
            )
    for _, base in df[df["is_baseline"]].iterrows():
        for ax, col in ((ax1, "leakage"), (ax2, ROBUST_ACC)):
            ax.axhline(
                base[f"{col}_mean"],
                ls=(0, (1, 3)),
                color=colors[base["method"]],
                lw=1.5,
                label=f"{base['method']} undefended (λ=0, dotted)",
            )
    ax1.set_ylabel(f"leakage: {LEAKAGE_LABELS[leak]} of {df['attack'].iloc[0]}")
    ax2.set_ylabel("robust accuracy under PGD")
    for ax in (ax1, ax2):
        ax.set_xlabel("DeMem risk threshold τ (fraction of each batch left unpenalised)")
        ax.grid(alpha=0.3)
    ax2.legend(fontsize=8, loc="best")
    if demem.empty:
        ax1.text(0.5, 0.5, "no DeMem groups (lambda > 0) in this experiment", ha="center", transform=ax1.transAxes)
    fig.suptitle("DeMem threshold sweep (95% intervals)")
    fig.tight_layout()
    return fig


def sweeps_threshold(df: pd.DataFrame) -> bool:
    """Whether the DeMem groups (lambda > 0, no DP) take two or more risk thresholds: with one, the
    threshold sweep is a single point per lambda on an axis of nothing."""
    demem = df[(df["lambda"] > 0) & ~df["dp"]]
    return demem["threshold"].nunique() >= 2


def all_figures(df: pd.DataFrame, roc: pd.DataFrame, membins: pd.DataFrame) -> dict[str, Figure]:
    figures = {
        "pareto.png": pareto_plot(df),
        "roc.png": roc_plot(df, roc),
        "membins.png": membins_plot(df, membins),
    }
    if sweeps_threshold(df):
        figures["threshold_sweep.png"] = threshold_sweep_plot(df)
    return figures


def save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def to_tensorboard(figures: dict[str, Figure], logdir: Path) -> None:
    """The figures as images in the experiment's TensorBoard (Images tab); replaces the images of an
    earlier summary, so re-summarising never stacks copies."""
    from torch.utils.tensorboard import SummaryWriter

    for old in Path(logdir).glob("events.out.tfevents.*"):
        old.unlink()
    with SummaryWriter(log_dir=str(logdir)) as w:
        for name, fig in figures.items():
            w.add_image(f"summary/{Path(name).stem}", _rgb(fig), dataformats="HWC")


def _rgb(fig: Figure) -> np.ndarray:
    """(H, W, 3) uint8 pixels of the figure, drawn on its own Agg canvas."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
