"""A results directory handed to us by someone else cannot make `demem resume / status / summarize`
delete or write anything outside it: crafted records are refused by name, symbolic links that lead
out are refused before any work, the lock is never opened through a link, and a refused command
leaves the experiment as it was. Each test puts a victim file or directory outside the experiment
and checks it is untouched. Also: a failed audit and a disk that fills during trials end with the
documented exit codes and one line, no traceback."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from orchestrator.cli import _drive, main
from orchestrator.layout import ExperimentDir, UnsafePath
from orchestrator.lock import ExperimentLock, UnsafeLock
from orchestrator.run import EXIT_DISK_FULL, EXIT_TRIALS_FAILED

from .conftest import tiny_spec


def _snapshot(root: Path) -> dict[str, str]:
    """Every entry below `root` (links as links) with its content's hash: what 'nothing lost' compares."""
    out = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(top) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


@pytest.fixture
def handed(tiny_experiment, tmp_path):
    """A copy of the finished tiny experiment at tmp_path/results/tiny, and a victim directory
    tmp_path/victim (outside it) holding s0/precious and precious.txt."""
    exp, _ = tiny_experiment
    root = tmp_path / "results" / "tiny"
    shutil.copytree(exp.root, root, symlinks=True)
    victim = tmp_path / "victim"
    (victim / "s0").mkdir(parents=True)
    (victim / "s0" / "precious").write_text("keep me")
    (victim / "precious.txt").write_text("keep me too")
    return ExperimentDir(root), victim


def _refused(capsys, argv: list[str], *fragments: str, code: int = 2) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == code, err
    for fragment in fragments:
        assert fragment in err, err
    assert "Traceback" not in err
    return err


def _victim_intact(victim: Path) -> None:
    assert (victim / "s0" / "precious").read_text() == "keep me"
    assert (victim / "precious.txt").read_text() == "keep me too"
    assert sorted(p.name for p in victim.rglob("*")) == ["precious", "precious.txt", "s0"]


def _records(exp: ExperimentDir) -> dict:
    return json.loads(exp.trials.read_text())


# --- records that would name paths outside -------------------------------------------------------


@pytest.mark.parametrize("field", ["group_id", "seed", "model_index", "key"])
@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_resume_refuses_records_that_name_other_paths(handed, capsys, field, where):
    """Before the fix, failed records with group_id "/victim" or "../../victim" made resume remove
    <victim>/s0 (rc 0)."""
    exp, victim = handed
    bad = str(victim) if where == "absolute" else os.path.relpath(victim, exp.audits)
    records = _records(exp)
    run_id = sorted(records)[0]
    if field == "key":
        records[bad] = {**records.pop(run_id), "status": "failed", "group_id": bad}
        named = bad
    else:
        for r in sorted(records)[:2]:
            records[r].update(status="failed", error="crash", deterministic=False)
        records[run_id][field] = bad if field == "group_id" else f"0/{bad}"
        named = run_id
    exp.trials.write_text(json.dumps(records))
    before = _snapshot(exp.root)
    err = _refused(capsys, ["resume", str(exp.root)], "trials.json: record", named[:80])
    assert field in err or "run id" in err
    _victim_intact(victim)
    assert _snapshot(exp.root) == before  # nothing inside lost or changed, not even the lock
    _refused(capsys, ["status", str(exp.root)], "trials.json: record")
    assert _snapshot(exp.root) == before


def test_a_run_id_of_another_shape_is_not_a_path(tmp_path):
    exp = ExperimentDir(tmp_path / "e")
    for gid, run_id in [("../x", "0" * 12 + "-s0-m000"), ("0" * 12, "../../x"), ("0" * 12, "/abs")]:
        with pytest.raises(UnsafePath, match="is not a name demem writes"):
            exp.run_dir(gid, run_id)
    with pytest.raises(UnsafePath, match="seed"):
        exp.audit_dir("0" * 12, "0/../..")
    with pytest.raises(UnsafePath, match="search trial id"):
        exp.search_run_dir("../t")
    assert (
        exp.run_dir("0123456789ab", "0123456789ab-s3-m007") == exp.root / "artifacts/0123456789ab/0123456789ab-s3-m007"
    )


def test_remove_never_leaves_the_experiment(handed):
    exp, victim = handed
    (exp.root / "out").symlink_to(victim)
    for path in (exp.root / "out" / "s0", exp.root / ".." / ".." / "victim", victim):
        with pytest.raises(UnsafePath, match="leads outside the experiment"):
            exp.remove(path)
    exp.remove(exp.root / "out")  # the link itself, not what it points at
    assert not (exp.root / "out").exists()
    _victim_intact(victim)


# --- links that lead out -------------------------------------------------------------------------


def test_a_linked_lock_is_never_followed_or_truncated(handed, capsys):
    """Before the fix, `ln -s ~/precious .driver.lock` then resume wrote the lock's JSON into ~/precious."""
    exp, victim = handed
    exp.lock.unlink(missing_ok=True)
    exp.lock.symlink_to(victim / "precious.txt")
    before = _snapshot(exp.root)
    _refused(capsys, ["resume", str(exp.root)], ".driver.lock", "not a plain file")
    _victim_intact(victim)
    assert _snapshot(exp.root) == before
    # the lock itself, without the tree check: O_NOFOLLOW, and a file shared with another name
    with pytest.raises(UnsafeLock, match="symbolic link"):
        ExperimentLock(exp.lock).acquire()
    exp.lock.unlink()
    os.link(victim / "precious.txt", exp.lock)
    with pytest.raises(UnsafeLock, match="other hard links"):
        ExperimentLock(exp.lock).acquire()
    _refused(capsys, ["resume", str(exp.root)], "other hard links")
    _victim_intact(victim)


def _place(exp: ExperimentDir, where: str) -> Path:
    gid = sorted(p.name for p in exp.artifacts.iterdir())[0]
    run = sorted(p.name for p in (exp.artifacts / gid).iterdir())[0]
    return exp.root / where.format(gid=gid, run=run)


@pytest.mark.parametrize(
    "where, target",
    [
        ("summary", "victim"),
        ("tensorboard-groups", "victim"),
        ("audits/{gid}", "victim"),
        ("audits/{gid}/s0", "victim/s0"),
        ("artifacts/{gid}/{run}", "victim"),
        ("tune", "victim"),
        ("runs.parquet", "victim/precious.txt"),
        ("trials.json", "victim/precious.txt"),
        ("summary/report.html", "victim/precious.txt"),
    ],
)
@pytest.mark.parametrize("command", ["resume", "summarize", "status"])
def test_links_that_lead_out_are_refused_before_any_work(handed, capsys, where, target, command):
    exp, victim = handed
    place = _place(exp, where)
    place.parent.mkdir(parents=True, exist_ok=True)
    if place.is_dir() and not place.is_symlink():
        shutil.rmtree(place)
    else:
        place.unlink(missing_ok=True)
    place.symlink_to(victim.parent / target)
    before = _snapshot(exp.root)
    _refused(capsys, [command, str(exp.root)], str(place), "leads outside the experiment")
    _victim_intact(victim)
    assert _snapshot(exp.root) == before


@pytest.mark.parametrize("command", ["resume", "summarize", "status"])
def test_a_fifo_is_refused_rather_than_read(handed, capsys, command):
    """Reading a FIFO planted as a record or table would hang the command."""
    exp, _ = handed
    exp.table("runs.parquet").unlink()
    os.mkfifo(exp.table("runs.parquet"))
    _refused(capsys, [command, str(exp.root)], "runs.parquet is not a file or a directory")


def test_a_link_that_stays_inside_is_followed(handed, capsys):
    exp, victim = handed
    (exp.root / "elsewhere").mkdir()
    (exp.root / "summary").symlink_to(exp.root / "elsewhere")
    assert main(["summarize", str(exp.root)]) == 0, capsys.readouterr().err
    assert (exp.root / "elsewhere" / "ranking.md").is_file()
    _victim_intact(victim)


def test_an_experiment_that_is_itself_a_link_works(handed, tmp_path, capsys):
    """Containment is judged from where the experiment resolves: results/x -> /big/disk/x is fine."""
    exp, _ = handed
    link = tmp_path / "linked"
    link.symlink_to(exp.root)
    assert main(["summarize", str(link)]) == 0, capsys.readouterr().err


# --- refusals with the documented exit code -------------------------------------------------------


def test_a_failed_audit_exits_3_with_one_line(handed, capsys):
    """Before the fix: the failure was printed, then rc 0 ('every group was audited')."""
    exp, _ = handed
    gid = sorted(p.name for p in exp.artifacts.iterdir())[0]
    exp.remove(exp.audit_dir(gid, 0))
    samples = next((exp.artifacts / gid).glob("*/samples.npz"))
    samples.write_bytes(samples.read_bytes()[:100])
    rc = main(["resume", str(exp.root)])
    out = capsys.readouterr()
    assert rc == EXIT_TRIALS_FAILED, out.err
    assert "the audit of 1 group(s) failed" in out.err and "Traceback" not in out.err + out.out
    assert f"{samples}: truncated or corrupt" in out.out  # the reason, once, on the progress output


def test_an_audit_task_failure_is_one_line(ray_session, handed):
    """What a Ray task raises reaches the progress line as its own message, without Ray's trace."""
    from orchestrator.audit_task import audit_group
    from orchestrator.progress import task_error
    from orchestrator.spec import load_spec

    exp, _ = handed
    spec = load_spec(exp.spec, check_data=False)
    gid = spec.groups()[0].group_id
    samples = next((exp.artifacts / gid).glob("*/samples.npz"))
    samples.write_bytes(b"")
    ref = ray_session.remote(num_cpus=0, max_retries=0)(audit_group).remote(
        str(exp.root), gid, 0, spec.audit, False, None
    )
    with pytest.raises(Exception) as info:
        ray_session.get(ref)
    line = task_error(info.value)
    assert line.startswith(f"{samples}: truncated or corrupt") and "\n" not in line
    assert len(str(info.value).splitlines()) > 3  # Ray's wrapping trace: what used to be printed


def test_a_disk_that_fills_during_trials_exits_5(ray_session, tmp_path, capsys):
    """Before the fix: exit 3 (trials failed), while the README documents 5 for a full disk."""
    from orchestrator.run import run_experiment

    from .trial_hooks import filling

    spec = tiny_spec(
        tmp_path, grid={"demem.lambda": [0.0]}, failure={"max_retries": 0}, audit={"models": 4, "attacks": ["loss"]}
    )
    code = _drive(
        "run",
        str(spec),
        lambda: run_experiment(
            spec, storage=tmp_path / "results", echo=lambda _: None, train=functools.partial(filling, models=[1])
        ),
    )
    err = capsys.readouterr().err
    assert code == EXIT_DISK_FULL, err
    assert "filled up during the trials" in err and "demem resume" in err and "Traceback" not in err
