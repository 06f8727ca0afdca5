"""Membership-inference attacks in a registry, like models, methods and datasets.

Each attack is registered with what it needs and what it assumes, so that the audit, the spec's
model-count checks and the command-line help read the same facts:

    family        "lira", "rmia", "threshold" or "boundary" (a threshold on the distance to the
                  decision boundary)
    query         what the signal is measured on: "clean" views, an "adversarial" query (PGD against
                  the target itself), or the "boundary" distance (bisection with PGD)
    references    "online" (reference models that trained on the sample and ones that did not),
                  "offline" (only ones that did not) or "none" (the target's own signal)
    min_models    the smallest group it can be estimated on (below it the audit refuses it)
    signals       the per-sample signals it reads (demem.evaluate.sample_statistics)
    queries       "all" recorded queries (augmented views), or only the "first" (the clean image)
    threat_model  what the adversary gets from the target: "scores" (its output probabilities on
                  inputs of its choice) or "white-box gradients" (its gradients as well, to craft
                  the perturbed queries)

Attack sets a spec or `--attacks` may name: each family (its clean-query attacks, as before robust
signals existed), "adversarial" and "boundary" (every attack on those queries), "clean", and "all".

An attack's `score` gets the audit's shared `AttackSetup` and returns `Scores`: one (targets, N)
array, higher = more likely a member, and what to record beside the metrics. An attack that cannot be
estimated on the group raises `AttackRefused`; the audit records the reason instead of a number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from demem.artifacts import GroupData
from demem.evasion import THREAT_NORMS
from demem.privacy import mia, rmia
from demem.privacy.boundary import log_distance
from demem.registry import Registry

# Every sample must be in at least 2 models of the group and out of at least 2 (the audit's own
# floor: memorization and the per-sample tables need both), which a balanced keep mask gives from 4.
AUDIT_MIN_MODELS = 4
# Shadows of each needed kind (IN and OUT; OUT only offline) every sample must have for LiRA, in
# every variant: the per-sample variance needs two values, and the fixed variance is the median of
# the per-sample ones (Carlini et al.'s code: median over samples of the shadows' per-sample std), so
# with one shadow a side every std is 0 and the "fixed" variance is the floor: scores of ~1e13.
LIRA_MIN_SHADOWS = 2
# The group size that gives them: the target and its complementary partner are left out, so each
# sample has (M - 2) / 2 shadows of a kind.
LIRA_MIN_MODELS = 2 * LIRA_MIN_SHADOWS + 2
LEAVE_PAIR_OUT = "leave target and partner out"


class AttackRefused(ValueError):
    """The attack cannot be estimated on this group (the message says why and what would do)."""


@dataclass
class AttackSetup:
    """What every attack of one audit shares.

    Attributes:
        group: the group's stacked per-sample signals.
        targets: (T,) indices (into the group's models) of the targets.
        partners: (T,) each target's complementary partner, left out of its references (-1: none).
        queries: how many recorded queries the "all"-query attacks use.
    """

    group: GroupData
    targets: np.ndarray
    partners: np.ndarray
    queries: int

    @property
    def keep(self) -> np.ndarray:
        return self.group.keep

    @property
    def n_references(self) -> int:
        """Reference models per target: the others less the partner (where every target has one)."""
        return self.group.n_models - 1 - int((self.partners >= 0).all())

    def signal(self, name: str, queries: str = "all") -> np.ndarray:
        """(M, N, K) of the first `queries` recorded queries, or (M, N) of the first ("first")."""
        sig = self.group.signals[name]
        return sig[:, :, 0] if queries == "first" else sig[:, :, : self.queries]

    def has(self, name: str) -> bool:
        return name in self.group.signals

    @cached_property
    def _probabilities(self) -> dict[str, np.ndarray]:
        return {}

    def true_label_probability(self, loss: str = "loss", queries: str = "all") -> np.ndarray:
        """p(y | x) per model and sample from the loss signal `loss`, averaged over the queries
        (RMIA's signal; computed once per signal)."""
        if loss not in self._probabilities:
            self._probabilities[loss] = rmia.true_label_probability(self.signal(loss, queries))
        return self._probabilities[loss]


@dataclass(frozen=True)
class Scores:
    """What an attack returns.

    Attributes:
        scores: (T, N) membership scores of the targets, higher = more likely a member.
        info: recorded beside the attack's metrics (variant, family, references, parameters).
        per_target: extra per-target metrics {name: (T,) values}; their mean and std are recorded too.
    """

    scores: np.ndarray
    info: dict[str, Any]
    per_target: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class MembershipAttack:
    """One registered membership-inference attack (see the module docstring for the fields)."""

    name: str
    family: str
    variant: str
    references: str
    min_models: int
    signals: tuple[str, ...]
    queries: str
    threat_model: str
    score: Callable[[AttackSetup], Scores]
    needs: str = ""  # why `min_models`, for the refusal messages
    query: str = "clean"
    # What it reads of the target's own keep row: "none", or "target non-members" (RMIA's population
    # z: samples known to be outside the target's training set, as its threat model grants).
    population: str = "none"


QUERY_KINDS = ("clean", "adversarial", "boundary")
THREAT_MODELS = ("scores", "labels", "white-box gradients")
POPULATIONS = ("none", "target non-members")
# Where each robust signal comes from, for the refusal when a group did not record it.
_RECORDED_BY = {"adversarial": "eval.adversarial", "boundary": "eval.boundary"}


def check_attack(attack: MembershipAttack, name: str | None = None) -> MembershipAttack:
    """The facts every attack, built-in or plugin, must state (a ValueError saying which is wrong)."""
    if not isinstance(attack, MembershipAttack):
        raise TypeError(f"a membership attack must be a demem.privacy.attacks.MembershipAttack, got {attack!r}")
    if name is not None and attack.name != name:
        raise ValueError(f"the attack's name {attack.name!r} differs from its entry point's {name!r}")
    if (
        attack.references not in ("online", "offline", "none")
        or attack.queries not in ("all", "first")
        or attack.query not in QUERY_KINDS
        or attack.threat_model not in THREAT_MODELS
        or attack.population not in POPULATIONS
        or (attack.family in (*QUERY_KINDS, "all") and attack.family != attack.query)  # set names stay unambiguous
        or not callable(attack.score)
    ):
        raise ValueError(
            f"membership attack {attack.name!r}: references {attack.references!r}, queries {attack.queries!r}, "
            f"query {attack.query!r}, threat model {attack.threat_model!r}, family {attack.family!r}, "
            f"population {attack.population!r} "
            f"(references online/offline/none, queries all/first, query one of {QUERY_KINDS}, threat model one "
            f"of {THREAT_MODELS}, population one of {POPULATIONS}, a family that is not 'all' or another query "
            "kind, a callable score)"
        )
    if attack.min_models < AUDIT_MIN_MODELS:
        raise ValueError(f"membership attack {attack.name!r}: min_models must be >= {AUDIT_MIN_MODELS} (the audit's)")
    return attack


MIA: Registry[MembershipAttack] = Registry("membership attack", group="demem.mia", adapt=check_attack)


def register_attack(attack: MembershipAttack) -> MembershipAttack:
    return MIA.register(attack.name)(check_attack(attack))


def attack_names(family: str | None = None) -> tuple[str, ...]:
    """Registered attacks in registration order (the audit's and the tables' order), of one family."""
    return tuple(n for n in MIA.registered() if family is None or MIA.get(n).family == family)


def attack_sets() -> dict[str, tuple[str, ...]]:
    """Names that stand for several attacks in attack lists: each family (its clean-query attacks),
    "adversarial" and "boundary" (the attacks on those queries), "clean", and "all"."""
    every = [MIA.get(n) for n in MIA.registered()]
    families = dict.fromkeys(a.family for a in every)
    sets = {f: tuple(a.name for a in every if a.family == f and a.query == "clean") for f in families}
    sets = {f: names for f, names in sets.items() if names}
    for kind in QUERY_KINDS:
        sets[kind] = tuple(a.name for a in every if a.query == kind)
    return {**sets, "all": attack_names()}


def recorded(setup: AttackSetup, signal: str, query: str) -> None:
    """Refuse an attack whose signal the group's models did not record (a robust signal switched off)."""
    if not setup.has(signal):
        raise AttackRefused(
            f"the models did not record {signal} ({_RECORDED_BY.get(query, 'eval')} was off when they trained)"
        )


# ---------------------------------------------------------------------------------------------------
# The built-in attacks
# ---------------------------------------------------------------------------------------------------

_LIRA_NEEDS = (
    f"each sample needs {LIRA_MIN_SHADOWS} IN and {LIRA_MIN_SHADOWS} OUT shadows besides the target and its "
    "partner to estimate a variance (the fixed variants use the median of the per-sample ones)"
)


def _reference_info(family: str, variant: str, setup: AttackSetup, query: str, signal: str, queries: str) -> dict:
    """What a reference-model attack (LiRA, RMIA) records beside its metrics."""
    return {
        "variant": variant,
        "family": family,
        "query": query,
        "signal": signal,
        "queries": setup.queries if queries == "all" else 1,
        "n_references": setup.n_references,
        "references": LEAVE_PAIR_OUT,
    }


def _lira(
    variant: str, signal: str = "phi", queries: str = "all", query: str = "clean", transform=None
) -> Callable[[AttackSetup], Scores]:
    def score(setup: AttackSetup) -> Scores:
        recorded(setup, signal, query)
        values = setup.signal(signal, queries)
        if transform is not None:
            values = transform(setup, values)
        try:
            scores = mia.lira_scores(
                values,
                setup.keep,
                variant=variant,
                targets=setup.targets,
                min_shadows=LIRA_MIN_SHADOWS,
                exclude=setup.partners,
            )
        except ValueError as e:  # too few shadows: say so, and how many models would do
            raise AttackRefused(f"{e} (LiRA needs a group of at least {LIRA_MIN_MODELS} models)") from None
        return Scores(scores, _reference_info("lira", variant, setup, query, signal, queries))

    return score


def _rmia(variant: str, signal: str = "loss", queries: str = "all", query: str = "clean"):
    def score(setup: AttackSetup) -> Scores:
        recorded(setup, signal, query)
        prob = setup.true_label_probability(signal, queries)
        scores = rmia.rmia_scores(prob, setup.keep, variant=variant, targets=setup.targets, exclude=setup.partners)
        info = _reference_info("rmia", variant, setup, query, signal, queries)
        info.update(population="the target's non-members", gamma=rmia.DEFAULT_GAMMA)
        if variant == "offline":
            info["a"] = rmia.DEFAULT_OFFLINE_A
        return Scores(scores, info)

    return score


def _threshold(
    kind: str, signal: str | None = None, query: str = "clean", family: str = "threshold"
) -> Callable[[AttackSetup], Scores]:
    """Global-threshold scores of `kind` on each target, plus the balanced accuracy of per-class
    thresholds learned on a shadow model (the next model of the group) and applied to the target.
    `kind` "distance" scores the boundary distance itself (members lie farther from the boundary)."""
    sig = signal or mia.THRESHOLD_SIGNALS[kind][0]

    def one(values: np.ndarray) -> np.ndarray:
        if kind == "distance":
            return values
        return mia.threshold_score(kind, **{mia.THRESHOLD_SIGNALS[kind][0]: values})

    def score(setup: AttackSetup) -> Scores:
        recorded(setup, sig, query)
        group = setup.group
        arr = setup.signal(sig, "first").astype(np.float64)
        every = np.stack([one(arr[i]) for i in range(group.n_models)])
        num_classes = int(group.labels.max()) + 1
        balanced = []
        for t in setup.targets:
            shadow = (t + 1) % group.n_models
            thr = mia.class_thresholds(every[shadow], group.keep[shadow], group.labels, num_classes)
            pred = mia.apply_class_thresholds(every[t], group.labels, thr)
            balanced.append(mia.balanced_accuracy_of(pred, group.keep[t]))
        info = {
            "variant": "global_threshold",
            "family": family,
            "query": query,
            "signal": sig,
            "n_references": 1,
            "references": "the next model of the group learns the per-class thresholds; the global ROC uses none",
        }
        return Scores(every[setup.targets], info, {"balanced_acc_class_thresholds": balanced})

    return score


def _builtin(name, family, variant, references, min_models, signal, queries, score, needs="", query="clean") -> None:
    """Register one of ours: each reads one signal; the clean ones see only the target's scores, the
    robust ones also its gradients (to craft their queries)."""
    threat = "scores" if query == "clean" else "white-box gradients"
    population = "target non-members" if family == "rmia" else "none"
    register_attack(
        MembershipAttack(
            name, family, variant, references, min_models, (signal,), queries, threat, score, needs, query, population
        )
    )


def _log_distance(norm: str):
    """The boundary LiRA's statistic: log of the distance, floored at a thousandth of the radius cap."""

    def transform(setup: AttackSetup, values: np.ndarray) -> np.ndarray:
        cap = setup.group.run["eval"]["boundary"][f"{norm}_max"]
        return log_distance(values, cap)

    return transform


for _v in mia.LIRA_VARIANTS:
    _builtin(f"lira_{_v}", "lira", _v, _v.split("_")[0], LIRA_MIN_MODELS, "phi", "all", _lira(_v), _LIRA_NEEDS)
for _v in rmia.RMIA_VARIANTS:
    _builtin(f"rmia_{_v}", "rmia", _v, _v, AUDIT_MIN_MODELS, "loss", "all", _rmia(_v))
for _kind in mia.THRESHOLD_ATTACKS:
    _signal = mia.THRESHOLD_SIGNALS[_kind][0]
    _builtin(_kind, "threshold", "global_threshold", "none", AUDIT_MIN_MODELS, _signal, "first", _threshold(_kind))

# On adversarial queries: the same attacks on the signals of a PGD example crafted against each model.
_ADV = "adversarial"
for _v in mia.LIRA_VARIANTS:
    _lira_adv = _lira(_v, "adv_phi", "first", _ADV)
    _builtin(
        f"lira_{_v}_adv",
        "lira",
        _v,
        _v.split("_")[0],
        LIRA_MIN_MODELS,
        "adv_phi",
        "first",
        _lira_adv,
        _LIRA_NEEDS,
        _ADV,
    )
for _v in rmia.RMIA_VARIANTS:
    _builtin(
        f"rmia_{_v}_adv",
        "rmia",
        _v,
        _v,
        AUDIT_MIN_MODELS,
        "adv_loss",
        "first",
        _rmia(_v, "adv_loss", "first", _ADV),
        query=_ADV,
    )
for _kind in mia.THRESHOLD_ATTACKS:
    _signal = "adv_" + mia.THRESHOLD_SIGNALS[_kind][0]
    _thr = _threshold(_kind, _signal, _ADV)
    _builtin(
        f"{_kind}_adv", "threshold", "global_threshold", "none", AUDIT_MIN_MODELS, _signal, "first", _thr, query=_ADV
    )

# Boundary distance (Choquette-Choo et al. 2021, Li & Zhang 2021): a threshold on it, and LiRA on its log.
for _norm in THREAT_NORMS:
    _signal = f"boundary_{_norm}"
    _thr = _threshold("distance", _signal, "boundary", "boundary")
    _builtin(
        _signal, "boundary", "global_threshold", "none", AUDIT_MIN_MODELS, _signal, "first", _thr, query="boundary"
    )
    _lira_b = _lira("online_fixed", _signal, "first", "boundary", _log_distance(_norm))
    _builtin(
        f"lira_{_signal}",
        "lira",
        "online_fixed",
        "online",
        LIRA_MIN_MODELS,
        _signal,
        "first",
        _lira_b,
        _LIRA_NEEDS,
        "boundary",
    )
