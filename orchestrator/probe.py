"""Does every node of the Ray cluster see the driver's results directory? Checked once, before any work.

Trials write their run directories to a plain directory, so on a cluster of several nodes it must be
one shared mount: otherwise trials on other nodes write files the driver never sees. The driver
writes a probe file holding a random token; one tiny task pinned to each alive node reads it at the
same absolute path and writes an answer file next to it, which the driver then reads (writes go both
ways). The probe files are removed afterwards, whatever happens.
"""

from __future__ import annotations

import secrets
import socket
import time
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

GRACE_S = 3.0  # how long a file just written elsewhere may take to show up (attribute caches)


class StorageNotShared(RuntimeError):
    """Some node of the cluster does not see the driver's results directory."""

    def __init__(self, root: Path, failures: list[tuple[str, str, str]], checked: int) -> None:
        self.root, self.failures, self.checked = root, failures, checked  # (node id, "host, ip", why)
        lines = [f"  node {node_id[:12]} ({where}): {why}" for node_id, where, why in failures]
        super().__init__(
            f"{root} is not shared by every node of the Ray cluster ({len(failures)} of {checked} failed the check):\n"
            + "\n".join(lines)
            + "\nTrials on those nodes would write results the driver never sees: use a directory on a shared "
            "mount every node sees, or object storage: --storage s3://bucket/prefix"
        )


def _holds(path: Path, text: str, grace_s: float = GRACE_S) -> bool:
    """Whether `path` holds exactly `text`, allowing `grace_s` for it to show up."""
    deadline = time.monotonic() + grace_s
    while True:
        try:
            if path.read_text() == text:
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


@ray.remote(num_cpus=0, max_retries=0)
def _answer(root: str, token: str, node_id: str) -> tuple[str, str, bool, str]:
    """On one node: (node id, host name, sees the probe, why not)."""
    host, probe = socket.gethostname(), Path(root) / f".probe-{token}"
    if not _holds(probe, token):
        why = "the driver's probe file is not there" if Path(root).is_dir() else "the directory does not exist there"
        return node_id, host, False, f"{why} (not the driver's filesystem)"
    try:
        (Path(root) / f".probe-{token}-{node_id[:12]}").write_text(f"{token} {node_id}")
    except OSError as e:
        return node_id, host, False, f"sees the probe file, but cannot write there: {e}"
    return node_id, host, True, ""


def check_shared(root: Path, timeout_s: float = 60) -> int:
    """Check (Ray initialised) that every alive node reads and writes `root` as the driver does.
    Returns the number of nodes checked (1: a single node, nothing to check, nothing written).
    Raises StorageNotShared naming each node that does not see it or did not answer in `timeout_s`."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return len(nodes) or 1
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    probe = root / f".probe-{token}"
    refs: dict[str, ray.ObjectRef] = {}
    try:
        probe.write_text(token)
        for node in nodes:
            strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            refs[node["NodeID"]] = _answer.options(scheduling_strategy=strategy).remote(
                str(root), token, node["NodeID"]
            )
        deadline = time.monotonic() + timeout_s
        failures: list[tuple[str, str, str]] = []
        for node in nodes:
            node_id = node["NodeID"]
            where = f"{node.get('NodeManagerHostname', '?')}, {node.get('NodeManagerAddress', '?')}"
            try:
                _, host, seen, why = ray.get(refs[node_id], timeout=max(0.0, deadline - time.monotonic()))
            except ray.exceptions.GetTimeoutError:
                failures.append((node_id, where, f"did not answer within {timeout_s:g} s"))
                continue
            except Exception as e:  # noqa: BLE001 - the node could not run the probe: that is the answer
                del refs[node_id]
                last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                failures.append((node_id, where, f"the probe task failed: {last}"))
                continue
            del refs[node_id]
            where = f"{host}, {node.get('NodeManagerAddress', '?')}"
            if not seen:
                failures.append((node_id, where, why))
            elif not _holds(root / f".probe-{token}-{node_id[:12]}", f"{token} {node_id}"):
                failures.append((node_id, where, "reads the probe file, but the driver does not see what it writes"))
        if failures:
            raise StorageNotShared(root, failures, len(nodes))
        return len(nodes)
    finally:
        for ref in refs.values():  # tasks that did not answer in time must not write afterwards
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort; the files are removed below anyway
                pass
        for path in root.glob(f".probe-{token}*"):
            path.unlink(missing_ok=True)
