"""A validated experiment: its groups, its trials (group x seed x model_index, fixed order) and the
plan `demem validate` / `demem run` print."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

from orchestrator.fmt import count, fmt_num
from orchestrator.spec.grid import Group, expand, pool_seed_of
from orchestrator.spec.keys import short_name
from orchestrator.spec.problems import SpecError
from orchestrator.spec.sections import AuditSpec, FailureSpec, ResourcesSpec
from orchestrator.spec.space import SearchSpec


@dataclass(frozen=True)
class Trial:
    """One model to train. `trial_key` is also its run id."""

    trial_key: str
    group_id: str
    seed: int
    model_index: int
    run: dict  # the full RunConfig dict of this model


@dataclass(frozen=True)
class ExperimentSpec:
    """A validated spec; build it with `load_spec` or `validate`.

    Attributes:
        name: the experiment name.
        base: the base run config as given (without n_models / model_index / seed).
        grid: expanded key path -> list of values (the `seed` grid key is moved to `seeds`).
        seeds: training seeds; every group trains its M models once per seed.
        seed_pool: "same" (every seed uses the base pool and keep masks) or "per-seed" (seed s uses
            data.pool_seed = base pool_seed + s: a replicate redraws the data split too).
        audit: the audit section (M = audit.models).
        resources: per trial.
        max_concurrent: None = as many trials as the cluster fits.
        failure: retries of a failed trial.
        search: None, or the search section. With a search, `groups()` / `trials()` describe the base
            point only.
        raw: the spec as loaded.
        points: None, or explicit groups instead of a grid: a list of {expanded key path: value}.
    """

    name: str
    base: dict
    grid: dict[str, list]
    seeds: tuple[int, ...]
    audit: AuditSpec
    resources: ResourcesSpec
    max_concurrent: int | None
    failure: FailureSpec
    search: SearchSpec | None
    raw: dict
    points: list[dict] | None = None
    seed_pool: str = "same"

    @property
    def max_retries(self) -> int:
        return self.failure.max_retries

    @functools.cached_property
    def _groups(self) -> tuple[Group, ...]:
        # Expanding resolves every grid point through RunConfig; do it once per spec.
        groups, problems = expand(self.base, self.grid, self.audit.models, self.points, self.seed_pool)
        if problems:  # only possible for a spec built by hand, not through validate()
            raise SpecError(problems)
        return tuple(groups)

    def groups(self) -> list[Group]:
        """The grid points, in grid order (the last grid key varies fastest)."""
        return list(self._groups)

    def trials(self) -> list[Trial]:
        """Every model to train: groups x seeds x model_index 0..M-1, in that order."""
        return list(self._trials)

    @functools.cached_property
    def trials_by_key(self) -> dict[str, Trial]:
        """Every trial by its run id (`trial_key`)."""
        return {t.trial_key: t for t in self._trials}

    @functools.cached_property
    def _trials(self) -> tuple[Trial, ...]:
        out = []
        for group in self.groups():
            for seed in self.seeds:
                for m in range(self.audit.models):
                    run = copy.deepcopy(group.run)
                    run["seed"], run["model_index"] = seed, m
                    run["data"]["pool_seed"] = pool_seed_of(group.run, seed, self.seed_pool)
                    out.append(
                        Trial(
                            trial_key=f"{group.group_id}-s{seed}-m{m:03d}",
                            group_id=group.group_id,
                            seed=seed,
                            model_index=m,
                            run=run,
                        )
                    )
        return tuple(out)

    def cost_text(self) -> str:
        """The estimated device time of the experiment's training and held-out evaluation, from
        `demem calibrate` timings cached for this machine's devices (audits, a few seconds of numpy
        per group, are not counted); or how to get one."""
        lines = _cost_lines(self.groups(), len(self.seeds) * self.audit.models, self.resources.gpu)
        if not lines:
            return "cost: not calibrated here; `demem calibrate SPEC` times one epoch per kind of group on this device"
        return "\n".join(lines)

    def plan(self) -> str:
        """A human-readable summary: groups, trials, training epochs, per-trial resources, audit."""
        groups, m, seeds = self.groups(), self.audit.models, self.seeds
        n_trials = len(groups) * len(seeds) * m
        lines = [
            f"experiment {self.name}: {count(len(groups), 'group')} x {count(len(seeds), 'seed')} "
            f"x {m} models = {n_trials} trials"
        ]
        width = max(len(g.label) for g in groups)
        lines += [
            f"  {g.label:<{width}}  {g.group_id}"
            + (f"  (also {'; '.join(g.aliases)}: the same run)" if g.aliases else "")
            for g in groups
        ]
        epochs = [g.run["train"]["epochs"] for g in groups]
        per_group = len(seeds) * m
        total = sum(epochs) * per_group
        how = (
            f"{n_trials} trials x {count(epochs[0], 'epoch')}"
            if len(set(epochs)) == 1
            else f"{per_group} trials per group x {'/'.join(str(e) for e in epochs)} epochs"
        )
        lines.append(f"training: {total} epochs in all ({how})")
        precisions = sorted({g.run["train"]["precision"] for g in groups})
        lines.append(
            f"precision: {', '.join(precisions)} (train.precision, resolved for the "
            f"{'GPU' if self.resources.gpu > 0 else 'CPU'} trials; the membership signals' logits are fp32)"
        )
        lines.append(self.cost_text())
        seed_list = ", ".join(str(s) for s in seeds)
        pools = (
            "each seed draws its own pool and keep masks (pool_seed = base + seed)"
            if self.seed_pool == "per-seed"
            else "every seed uses the same pool and keep masks"
        )
        lines.append(f"seeds (the unit of replication): {seed_list}; {pools}")
        at_once = "as many as fit" if self.max_concurrent is None else f"at most {self.max_concurrent}"
        lines.append(
            f"per trial: {fmt_num(self.resources.cpu)} CPU, {fmt_num(self.resources.gpu)} GPU"
            f"{_sharing(self.resources.gpu)}; "
            f"{at_once} at once; max_retries: {self.max_retries}"
        )
        targets = "every model" if self.audit.targets is None else f"the first {self.audit.targets} models"
        queries = "all recorded" if self.audit.queries is None else str(self.audit.queries)
        lines.append(
            f"audit per group and seed: {m} models, targets: {targets}, queries: {queries}, "
            f"attacks: {', '.join(self.audit.attacks)}; {shadows_text(m)}"
        )
        if self.audit.keep_models:
            lines.append(weights_text(groups, len(seeds) * m))
        if self.search is not None:
            s = self.search
            objectives = ", ".join(f"{o.metric} ({o.mode})" for o in s.objectives)
            lines = [
                f"experiment {self.name}: search with {s.algorithm}, {s.num_samples} trials over "
                f"{', '.join(short_name(p) for p in s.space)}",
                f"  each trial trains one model on half the pool (seed {seeds[0]}) and is scored on {objectives}",
                "  privacy score: loss-threshold attack on the model's own members vs "
                "non-members; confirm the best points with `demem confirm`",
                f"  base: {groups[0].group_id}; scheduler: {s.scheduler or 'none'}",
                f"training: at most {s.num_samples * epochs[0]} epochs "
                f"({s.num_samples} trials x {count(epochs[0], 'epoch')} of the base)",
                lines[-2],
                f"confirmation audit per group: {m} models, attacks: {', '.join(self.audit.attacks)}",
            ]
        return "\n".join(lines)


def shadows_text(m: int) -> str:
    """What each target is attacked with in a group of m models, and the smallest M LiRA needs."""
    from orchestrator.spec.sections import MIN_MODELS_LIRA

    per_kind = (m - 2) // 2
    return (
        f"each target is attacked with {m - 2} reference models ({per_kind} IN and {per_kind} OUT per "
        f"sample; the target and its partner are left out); LiRA needs at least {MIN_MODELS_LIRA} models"
    )


def weights_text(groups: list[Group], models_per_group: int) -> str:
    """The disk that `audit.keep_models: true` costs: each model's parameters x 4 bytes (float32)."""
    import torch

    from demem.models import count_parameters
    from demem.train import RunConfig, model_for

    sizes: dict[tuple, int] = {}  # groups that differ only in training settings share a network
    total = 0
    for g in groups:
        net = (g.run["data"]["dataset"], g.run["train"]["arch"], g.run["train"].get("norm"))
        if net not in sizes:
            model = model_for(RunConfig.from_dict(g.run), torch.device("cpu"))
            sizes[net] = count_parameters(model, trainable_only=False)
        total += sizes[net] * 4 * models_per_group
    return (
        f"keep_models: each model's weights stay in its run directory (model.pt): about {total / 2**20:,.1f} MiB "
        f"in all ({models_per_group} models per group x parameters x 4 bytes)"
    )


def _cost_lines(groups: list[Group], runs_per_group: int, gpu: float) -> list[str]:
    from demem.calibrate import cost_key, estimate_seconds, fmt_hours, load_cache

    out = []
    for device, entries in load_cache().items():
        if not isinstance(entries, dict) or not all(cost_key(g.run) in entries for g in groups):
            continue
        seconds = runs_per_group * sum(estimate_seconds(g.run, entries[cost_key(g.run)]) for g in groups)
        share = f", {fmt_hours(seconds * gpu)} of whole GPUs at {gpu:g} GPU per trial" if 0 < gpu < 1 else ""
        out.append(f"cost: about {fmt_hours(seconds)} of {device} time to train and evaluate every model{share}")
    return out


def _sharing(gpu: float) -> str:
    """' (4 trials share a GPU)' for a fraction that packs several trials onto one GPU."""
    return f" ({int(1 / gpu + 1e-9)} trials share a GPU)" if 0 < gpu < 1 and int(1 / gpu + 1e-9) >= 2 else ""


def trial_resources(spec: ExperimentSpec) -> dict[str, float]:
    """What one trial asks Ray Tune for ({"cpu", "gpu"}), for `tune.with_resources`."""
    return {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
