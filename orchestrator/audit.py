"""The audit stage of one (group, seed): load its models' per-sample statistics, run the spec's
attacks, write audit.json + samples.parquet. Plain numpy work; the driver runs it in a Ray task while
other groups train, or in-process at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from demem.artifacts import load_group
from demem.privacy.audit import run_audit, write_audit
from orchestrator.layout import ExperimentDir
from orchestrator.spec import AuditSpec


def audit_group(exp_root: str, group_id: str, seed: int, audit: AuditSpec, partial: bool) -> dict[str, Any]:
    """Audit one (group, seed) of the experiment at `exp_root`; `partial`: some models failed."""
    exp = ExperimentDir(Path(exp_root))
    group = load_group(exp.artifacts / group_id, seed=seed, allow_partial=partial)
    result, per_sample = run_audit(group, audit.config())
    result["partial"] = partial
    write_audit(exp.audit_dir(group_id, seed), result, per_sample)
    return {"group_id": group_id, "seed": seed}
