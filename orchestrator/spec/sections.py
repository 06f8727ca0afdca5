"""The typed sections of a spec: `audit`, `resources`, `failure`. Each is checked once, at
validation, and handed on as a frozen dataclass; nothing downstream re-reads the raw dict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from demem.checks import is_int, is_number
from demem.privacy.attacks import AUDIT_MIN_MODELS, LIRA_MIN_MODELS, MIA, MembershipAttack, attack_names, attack_sets
from demem.privacy.audit import MIA_ATTACKS, AuditConfig, parse_attacks
from orchestrator.fmt import fmt_num
from orchestrator.spec.grid import Group
from orchestrator.spec.problems import mapping, unknown_keys

# Models a group needs for the audit, from the balanced keep mask (each sample in M/2 models and out
# of as many): run_audit wants every sample in >= 2 and out of >= 2 models (M >= 4). Each attack
# states its own minimum in the registry (demem.privacy.attacks: LiRA's is 6, RMIA's and the
# threshold attacks' the audit's 4); the spec refuses an attack list a group is too small for.
MIN_MODELS_AUDIT = AUDIT_MIN_MODELS
MIN_MODELS_LIRA = LIRA_MIN_MODELS


# Bounds on what one spec may ask for, checked before anything is written (LiRA's paper used 256
# models per group; a million would only fill the disk).
MAX_MODELS = 1024


@dataclass(frozen=True)
class AuditSpec:
    """`audit`: how each (group, seed) is audited.

    Attributes:
        models: M models per group (RunConfig.n_models); a trial trains one of them.
        targets: attack the first `targets` models as targets; None = every model.
        attacks: expanded attack names (demem.privacy.audit.parse_attacks); default: all.
        queries: LiRA queries to use (<= eval.queries); None = all recorded.
        keep_models: keep each model's trained weights (model.pt in its run directory), so a later
            audit (`demem audit --format checkpoints`) can compute new signals without retraining.
    """

    models: int
    targets: int | None = None
    attacks: tuple[str, ...] = MIA_ATTACKS
    queries: int | None = None
    keep_models: bool = False

    def config(self) -> AuditConfig:
        """The audit code's own config for this section."""
        return AuditConfig(attacks=self.attacks, targets=self.targets, queries=self.queries)


@dataclass(frozen=True)
class ResourcesSpec:
    """`resources`: what one trial asks for. gpu may be a fraction (0.25) to pack small models."""

    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class FailureSpec:
    """`failure`: retries of a failed trial."""

    max_retries: int = 1


def _too_small(asked: tuple[str, ...], models: int) -> list[str]:
    """One problem per family of asked attacks that a group of `models` is too small for (each
    attack's `min_models` in the registry), naming the attacks that would run at this size."""
    short: dict[str, list[MembershipAttack]] = {}
    for attack in map(MIA.get, asked):
        if attack.min_models > models:
            short.setdefault(attack.family, []).append(attack)
    would = ", ".join(n for n in MIA.registered() if MIA.get(n).min_models <= models)
    return [
        f"audit.attacks: {', '.join(a.name for a in few)} need at least {max(a.min_models for a in few)} models "
        f"per group, got {models}"
        + (f": {few[0].needs}" if few[0].needs else "")
        + f"; use more models, or attacks that run on {models}: {would}"
        for few in short.values()
    ]


def check_audit(audit: Any, given: bool, problems: list[str]) -> AuditSpec:
    """The audit section; with problems, a stand-in whose `models` is MIN_MODELS_AUDIT when unknown
    (so the groups can still be resolved and checked)."""
    out: dict[str, Any] = {
        "models": None,
        "targets": None,
        "attacks": MIA_ATTACKS,
        "queries": None,
        "keep_models": False,
    }
    if not given or audit is None:
        problems.append("audit.models: required")
        return _audit(out)
    if not isinstance(audit, dict):
        problems.append("audit: must be a mapping")
        return _audit(out)
    unknown_keys("audit", audit, tuple(sorted(AuditSpec.__dataclass_fields__)), problems)

    attacks = audit.get("attacks")
    asked: tuple[str, ...] = MIA_ATTACKS  # what the model-count rules check; nothing when the list is broken
    if attacks is not None:
        asked = ()
        items = attacks.split(",") if isinstance(attacks, str) else attacks
        if not (isinstance(items, list) and items and all(isinstance(a, str) and a.strip() for a in items)):
            problems.append("audit.attacks: must be a non-empty list of attack names")
        else:
            expanded = parse_attacks(",".join(items))
            bad = [a for a in expanded if a not in MIA]
            if bad:
                problems.append(
                    f"audit.attacks: unknown attack(s) {', '.join(map(repr, bad))}; known: "
                    f"{', '.join(attack_names())}, and {', '.join(attack_sets())}"
                )
            else:
                out["attacks"] = asked = expanded

    models = audit.get("models")
    if models is None:
        problems.append("audit.models: required")
    elif not (is_int(models) and models >= 2):
        problems.append("audit.models: must be an integer >= 2")
    elif models > MAX_MODELS:
        problems.append(f"audit.models: at most {MAX_MODELS} models per group, got {models}")
    else:
        out["models"] = models
        if models < MIN_MODELS_AUDIT:
            problems.append(
                f"audit.models: the audit needs every sample in at least 2 models and out of at least "
                f"2, so at least {MIN_MODELS_AUDIT} models per group, got {models}"
            )
        else:
            problems.extend(_too_small(asked, models))

    targets = audit.get("targets")
    if targets is not None:
        if not (is_int(targets) and targets >= 1):
            problems.append("audit.targets: must be an integer >= 1 or null")
        elif out["models"] is not None and targets > out["models"]:
            problems.append(f"audit.targets: must be <= audit.models ({out['models']}), got {targets}")
        else:
            out["targets"] = targets
    queries = audit.get("queries")
    if queries is not None:
        if not (is_int(queries) and queries >= 1):
            problems.append("audit.queries: must be an integer >= 1 or null")
        else:
            out["queries"] = queries
    keep_models = audit.get("keep_models", False)
    if not isinstance(keep_models, bool):
        problems.append(f"audit.keep_models: must be true or false, got {keep_models!r}")
    else:
        out["keep_models"] = keep_models
    return _audit(out)


def _audit(fields: dict[str, Any]) -> AuditSpec:
    models = fields["models"] if fields["models"] is not None else MIN_MODELS_AUDIT
    return AuditSpec(**{**fields, "models": models, "attacks": tuple(fields["attacks"])})


def check_queries(queries: int | None, groups: list[Group], problems: list[str]) -> None:
    if queries is None:
        return
    for g in groups:
        recorded = g.run["eval"]["queries"]
        if queries > recorded:
            where = "" if g.label == "base" else f" at grid point {g.label}"
            problems.append(
                f"audit.queries: {queries} asked for, but the models record only {recorded} (eval.queries){where}"
            )
            return


def check_signals(attacks: tuple[str, ...], groups: list[Group], problems: list[str]) -> None:
    """Every asked attack on adversarial queries or boundary distances needs its signal recorded by
    the group's models (eval.adversarial, eval.boundary and its norms): refused before anything trains."""
    for g in groups:
        ev = g.run["eval"]
        missing = []
        for name in attacks:
            attack = MIA.get(name)
            if attack.query == "adversarial" and ev.get("adversarial") is None:
                missing.append((name, "eval.adversarial is null"))
            elif attack.query == "boundary":
                norms = (ev.get("boundary") or {}).get("norms") or ()
                norm = attack.signals[0].removeprefix("boundary_")
                if norm not in norms:
                    why = (
                        "eval.boundary is null" if ev.get("boundary") is None else f"eval.boundary.norms has no {norm}"
                    )
                    missing.append((name, why))
        if missing:
            where = "" if g.label == "base" else f" at grid point {g.label}"
            problems.append(
                "audit.attacks: "
                + "; ".join(f"{name} needs a signal the models would not record ({why})" for name, why in missing)
                + f"{where}: record it, or leave those attacks out"
            )
            return


def check_resources(resources: Any, available: dict[str, float] | None, problems: list[str]) -> ResourcesSpec:
    resources = mapping("resources", resources, problems)
    unknown_keys("resources", resources, tuple(sorted(ResourcesSpec.__dataclass_fields__)), problems)
    cpu, gpu = resources.get("cpu", 1), resources.get("gpu", 0)
    ok_cpu, ok_gpu = is_number(cpu, finite=True) and cpu > 0, is_number(gpu, finite=True) and gpu >= 0
    if not ok_cpu:
        problems.append("resources.cpu: must be > 0")
    if not ok_gpu:
        problems.append("resources.gpu: must be >= 0")
    elif gpu > 1 and gpu != int(gpu):
        # Ray packs fractions of one GPU; above one it only hands out whole devices.
        problems.append(f"resources.gpu: a trial gets a fraction of one GPU or whole GPUs, got {fmt_num(gpu)}")
    if available is not None:
        have_cpu, have_gpu = available.get("CPU", 0), available.get("GPU", 0)
        if ok_cpu and cpu > have_cpu:
            problems.append(
                f"resources: a trial needs {fmt_num(cpu)} CPU but the largest node has "
                f"{fmt_num(have_cpu)}; no node could satisfy it"
            )
        if ok_gpu and gpu > 0 and not have_gpu:
            problems.append(
                f"resources: a trial needs {fmt_num(gpu)} GPU but no node has one; no node could satisfy it"
            )
        elif ok_gpu and gpu > have_gpu:
            problems.append(
                f"resources: a trial needs {fmt_num(gpu)} GPU but the largest node has "
                f"{fmt_num(have_gpu)}; no node could satisfy it"
            )
    return ResourcesSpec(cpu=float(cpu) if ok_cpu else 1.0, gpu=float(gpu) if ok_gpu else 0.0)


def check_failure(failure: Any, problems: list[str]) -> FailureSpec:
    failure = mapping("failure", failure, problems)
    unknown_keys("failure", failure, tuple(FailureSpec.__dataclass_fields__), problems)
    retries = failure.get("max_retries", 1)
    if not (is_int(retries) and retries >= 0):
        problems.append("failure.max_retries: must be an integer >= 0")
        return FailureSpec()
    return FailureSpec(max_retries=retries)
