"""The audit stage of one (group, seed): load its models' per-sample statistics, run the spec's
attacks, write audit.json + samples.parquet. Plain numpy work; the driver runs it in a Ray task while
other groups train, or in-process at the end. On object storage it pulls the group's run directories
first and pushes its audit after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from demem.artifacts import CHECKPOINT, load_group
from demem.privacy.audit import AUDIT_JSON, run_audit, write_audit
from orchestrator.layout import ExperimentDir
from orchestrator.spec import AuditSpec


def audit_group(
    exp_root: str, group_id: str, seed: int, audit: AuditSpec, partial: bool, remote: str | None = None
) -> dict[str, Any]:
    """Audit one (group, seed) of the experiment at `exp_root` (or its URI `remote`, mirrored on this
    machine); `partial`: some models failed."""
    exp = ExperimentDir.at(remote) if remote else ExperimentDir(Path(exp_root))
    if exp.store is not None:
        exp.store.pull(f"artifacts/{group_id}", skip_names=(CHECKPOINT,))
    group = load_group(exp.artifacts / group_id, seed=seed, allow_partial=partial)
    result, per_sample = run_audit(group, audit.config())
    result["partial"] = partial
    out = exp.inside(exp.audit_dir(group_id, seed))
    write_audit(out, result, per_sample)
    if exp.store is not None:
        exp.store.push(exp.rel(out), skip_names=(AUDIT_JSON,))
        exp.store.push(exp.rel(exp.audit_result(group_id, seed)))  # audit.json = done
    return {"group_id": group_id, "seed": seed}
