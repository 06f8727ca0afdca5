"""Experiments on object storage: `--storage s3://...` against a local S3-compatible server (moto's
server mode on 127.0.0.1, started and stopped here). Run directories, audits and Parquet land in the
bucket; `resume`, `status` and `summarize` read from it. The session's Ray workers were started
before this module and know nothing of it: the URI carries the endpoint and (test) credentials, and
the workers' mirror (~/.cache/demem/staging) differs from the driver's ($DEMEM_STAGING), so every
file the driver reads has come through the bucket."""

from __future__ import annotations

import io
import json
import logging
import shutil
import uuid
from contextlib import redirect_stdout
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("moto")
from pyarrow import fs  # noqa: E402

from orchestrator.storage import Remote, StorageError, join_uri, redact, staging_dir  # noqa: E402

from .conftest import tiny_spec  # noqa: E402

BUCKET = "demem-test"


@pytest.fixture(scope="module")
def s3():
    """(storage URI, pyarrow filesystem) of a fresh bucket on a moto server on 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server._server.server_port
    options = f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    filesystem, _ = fs.FileSystem.from_uri(f"s3://testing:testing@{BUCKET}?{options}&allow_bucket_creation=true")
    filesystem.create_dir(BUCKET)
    yield f"s3://testing:testing@{BUCKET}/results?{options}", filesystem
    server.stop()


@pytest.fixture
def staging(tmp_path, monkeypatch):
    """The driver's mirror root (the workers keep the default one)."""
    path = tmp_path / "staging"
    monkeypatch.setenv("DEMEM_STAGING", str(path))
    return path


def _keys(filesystem, prefix: str) -> set[str]:
    infos = filesystem.get_file_info(fs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True))
    return {i.path[len(BUCKET) + len(prefix) + 2 :] for i in infos if i.type == fs.FileType.File}


def test_uri_helpers_and_refusals(s3, staging):
    uri, _ = s3
    exp = join_uri(uri, "tiny")
    assert exp.startswith(f"s3://testing:testing@{BUCKET}/results/tiny?endpoint_override=")
    assert redact(exp).startswith(f"s3://***@{BUCKET}/results/tiny?") and "testing" not in redact(exp)
    assert staging_dir(exp).parent.parent == staging and staging_dir(exp).name == "tiny"
    with pytest.raises(StorageError, match="not ftp://"):
        Remote("ftp://host/x")
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        Remote(uri.replace(BUCKET, "no-such-bucket")).check()


def test_push_pull_round_trip_and_hostile_object_names(s3, staging, tmp_path):
    uri, filesystem = s3
    remote = Remote(join_uri(uri, f"rt-{uuid.uuid4().hex[:6]}"))
    (remote.local / "a" / "b").mkdir(parents=True)
    (remote.local / "a" / "b" / "checkpoint.pt").write_bytes(b"\x00\x01" * 1000)
    (remote.local / "a" / "m.json").write_text("{}")
    (remote.local / "a" / ".m.json.x1.tmp").write_text("half-written")  # never pushed
    assert remote.push("a") == 2
    shutil.rmtree(remote.local)
    assert remote.pull("a", skip_names=("m.json",)) == 1
    assert (remote.local / "a" / "b" / "checkpoint.pt").read_bytes() == b"\x00\x01" * 1000
    assert not (remote.local / "a" / "m.json").exists()
    # A stale mirror does not pass for the record: what the bucket lacks goes.
    (remote.local / "a" / "b" / "metrics.json").write_text("{}")
    assert remote.pull("a") == 2 and not (remote.local / "a" / "b" / "metrics.json").exists()
    assert (remote.local / "a" / "m.json").exists()
    _, path = remote.filesystem()
    with filesystem.open_output_stream(f"{path}/x/..evil/../../../escape") as out:
        out.write(b"x")
    names = _keys(filesystem, path.split("/", 1)[1] + "/x")
    if any(".." in n.split("/") for n in names):  # the server kept the name: the pull must refuse it
        with pytest.raises(StorageError, match="not a plain relative path"):
            remote.pull("x")
    assert not (remote.local.parent / "escape").exists()


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", "a\\b", "a/\x00"])
def test_an_object_name_that_is_not_a_plain_relative_path_is_refused(name):
    from orchestrator.storage import _safe_rel

    assert _safe_rel(name) is None
    assert _safe_rel("artifacts/g1/r1/metrics.json") == "artifacts/g1/r1/metrics.json"


def test_a_grid_experiment_on_s3_runs_resumes_and_summarizes(ray_session, s3, staging, tmp_path, tiny_experiment):
    from orchestrator.run import resume_experiment, run_experiment, status
    from orchestrator.summarize import summarize

    uri, filesystem = s3
    spec = tiny_spec(tmp_path, name=f"tiny-s3-{uuid.uuid4().hex[:6]}")
    lines: list[str] = []
    exp = run_experiment(spec, storage=uri, echo=lines.append)
    workers_mirror = exp.root.relative_to(staging)
    try:
        prefix = f"results/{exp.root.name}"
        keys = _keys(filesystem, prefix)
        for name in ("spec.yaml", "meta.json", "trials.json", "runs.parquet", "audits.parquet", "samples.parquet"):
            assert name in keys
        runs = pd.read_parquet(exp.root / "runs.parquet")
        assert len(runs) == 8 and (runs["status"] == "done").all()
        for run_id, group in zip(runs["run_id"], runs["group_id"]):
            assert {f"artifacts/{group}/{run_id}/metrics.json", f"artifacts/{group}/{run_id}/samples.npz"} <= keys
        assert not any(k.endswith("checkpoint.pt") for k in keys)  # removed once each run finished
        assert sum(k.startswith("audits/") and k.endswith("/audit.json") for k in keys) == 2
        assert any(k.startswith("tune/run-1/") for k in keys)  # Tune's own logs, through the same filesystem
        assert "testing:testing" not in "\n".join(lines)  # the credentials are never printed

        # The same models as the local run of the same spec (seeded, CPU).
        local = pd.read_parquet(tiny_experiment[0].root / "runs.parquet").set_index("run_id")
        s3_runs = runs.set_index("run_id")
        pd.testing.assert_series_equal(
            s3_runs["natural_acc"].sort_index(), local["natural_acc"].sort_index(), check_names=False
        )

        # An unfinished model and a missing audit, and no local mirror: resume works from the bucket.
        lost = runs.iloc[0]
        _, path = exp.store.filesystem()
        for rel in (f"artifacts/{lost.group_id}/{lost.run_id}/metrics.json", "runs.parquet"):
            filesystem.delete_file(f"{path}/{rel}")
        audit = next(k for k in keys if k.startswith(f"audits/{lost.group_id}/") and k.endswith("audit.json"))
        filesystem.delete_file(f"{path}/{audit}")
        records = json.loads((exp.root / "trials.json").read_text())
        del records[lost.run_id]  # the driver died before it recorded the run
        with filesystem.open_output_stream(f"{path}/trials.json") as f:
            f.write(json.dumps(records).encode())
        shutil.rmtree(exp.root)
        out: list[str] = []
        resume_experiment(exp.remote, echo=out.append)
        assert any("7 done, 0 failed, 1 running or interrupted" in line for line in out), out
        again = pd.read_parquet(exp.root / "runs.parquet").set_index("run_id").sort_index()
        pd.testing.assert_frame_equal(
            again[["natural_acc", "robust_acc_pgd"]], s3_runs[["natural_acc", "robust_acc_pgd"]].sort_index()
        )
        assert {"runs.parquet", audit} <= _keys(filesystem, prefix)

        # status and summarize from the URI alone
        shutil.rmtree(exp.root)
        buf = io.StringIO()
        assert status(exp.remote, out=buf) == 0
        assert (
            "8 done, 0 failed, 0 running or interrupted, 0 pending of 8 trials; 2 of 2 (group, seed) audits done"
            in buf.getvalue()
        )
        shutil.rmtree(exp.root)
        with redirect_stdout(io.StringIO()):
            summarize(exp.remote, echo=lambda *_: None)
        assert {"summary/ranking.md", "summary/report.html"} <= _keys(filesystem, prefix)
    finally:
        shutil.rmtree(Path.home() / ".cache/demem/staging" / workers_mirror, ignore_errors=True)


def test_a_missing_bucket_is_refused_before_ray_starts_or_anything_is_written(s3, staging, tmp_path, capsys):
    from orchestrator.cli import main

    uri, _ = s3
    spec = tiny_spec(tmp_path)
    code = main(["run", str(spec), "--storage", uri.replace(BUCKET, "missing-bucket")])
    err = capsys.readouterr().err
    assert code == 2 and "bucket 'missing-bucket' does not exist" in err and "testing:testing" not in err
    assert not staging.exists()
