"""`demem merge`: a study run a few seeds at a time summarizes as the study run at once. The
reference is the unsplit tables (test_forest's synthetic study, 4 seeds) and test_forest's plain
loop with scipy's t quantile; the pieces are split by seed and merged back."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from orchestrator import forest
from orchestrator.cli import main
from orchestrator.merge import merge_experiments
from orchestrator.spec import load_spec
from orchestrator.summarize import summarize
from tests.orchestrator.test_forest import SEEDS, _loop, _tables

ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
QUIET = {"echo": lambda _: None}


def _piece(root: Path, name: str, seeds: list[int], tables, spec: dict | None = None) -> Path:
    """An experiment directory holding `seeds` of the synthetic study, as `collect` leaves one."""
    root.mkdir(parents=True)
    raw = dict(spec or SPEC, name=name)
    raw["seeds"] = {**raw["seeds"], "train": seeds}
    (root / "spec.yaml").write_text(yaml.safe_dump(raw))
    (root / "meta.json").write_text(json.dumps({"name": name}))
    for table, frame in (("runs", tables.runs), ("audits", tables.audits)):
        frame[frame["seed"].isin(seeds)].assign(experiment=name).to_parquet(root / f"{table}.parquet")
    for table in ("samples", "roc", "membins", "lowfpr"):
        pd.DataFrame({"group_id": pd.Series(dtype=str)}).to_parquet(root / f"{table}.parquet")
    return root


@pytest.fixture()
def pieces(tmp_path):
    tables = _tables()
    a = _piece(tmp_path / "p01", "study-s01", [0, 1], tables)
    b = _piece(tmp_path / "p23", "study-s23", [2, 3], tables)
    return tables, a, b


def test_merged_pieces_summarize_as_the_whole_study(pieces, tmp_path):
    tables, a, b = pieces
    out = merge_experiments([a, b], "study", storage=tmp_path / "merged", **QUIET)
    merged = load_spec(out / "spec.yaml", check_data=False)
    assert merged.name == "study" and list(merged.seeds) == list(SEEDS)
    meta = yaml.safe_load((out / "meta.json").read_text())
    assert [p["seeds"] for p in meta["pieces"]] == [[0, 1], [2, 3]]
    runs = pd.read_parquet(out / "runs.parquet")
    assert len(runs) == len(tables.runs) and set(runs["experiment"]) == {"study"}

    whole = tmp_path / "whole"
    _piece(whole, "study", list(SEEDS), tables)
    got = summarize(out, leakage="auc", attack="loss", tensorboard=False, **QUIET)
    want = summarize(whole, leakage="auc", attack="loss", tensorboard=False, **QUIET)
    f_got, f_want = (pd.read_csv(p[forest.FILE]) for p in (got, want))
    pd.testing.assert_frame_equal(f_got, f_want)
    # and the interval is the plain loop's over all four seeds, not over one piece's two
    row = f_got[(f_got["comparison"] == "pgd_dm − pgd") & (f_got["objective"] == "robust")].iloc[0]
    mean, lo, hi = _loop(tables.runs, "pgd_dm", "pgd", "robust_acc_pgd", "model_index", SEEDS)
    assert (row["n"], row["mean"], row["lo"], row["hi"]) == pytest.approx((4, mean, lo, hi))


def test_pieces_that_are_not_one_spec_are_refused_before_anything_is_written(pieces, tmp_path):
    tables, a, b = pieces
    other = dict(SPEC, base={**SPEC["base"], "train": {**SPEC["base"]["train"], "epochs": 99}})
    c = _piece(tmp_path / "p4", "study-s4", [4], tables, spec=other)
    d = _piece(tmp_path / "p1", "study-s1", [1], tables)
    out = tmp_path / "merged"
    with pytest.raises(ValueError, match="differs .* in base"):
        merge_experiments([a, c], "m", storage=out, **QUIET)
    with pytest.raises(ValueError, match="seed 1 is in both"):
        merge_experiments([a, d], "m", storage=out, **QUIET)
    (b / "roc.parquet").unlink()
    with pytest.raises(ValueError, match="has no roc.parquet: finish it first"):
        merge_experiments([a, b], "m", storage=out, **QUIET)
    with pytest.raises(ValueError, match="one path component"):
        merge_experiments([a, d], "../m", storage=out, **QUIET)
    assert not out.exists()


def test_pieces_whose_groups_resolved_differently_are_refused(tmp_path):
    """One spec, `train.precision: auto`, run on a machine with native bf16 and on one without: the
    second piece's groups carry fp32 and so other group ids. Concatenated, each label would be two
    groups (and an analysis by label would silently keep one), so merge refuses, naming the setting."""
    tables = _tables()
    bf16 = tables.runs.assign(**{"config.train.precision": "bf16"})
    runs = bf16.copy()
    slow = runs["seed"].isin([2, 3]) & (runs["group_label"] == "pgd")
    runs.loc[slow, "config.train.precision"] = "fp32"
    runs.loc[slow, "group_id"] = "pgd_fp32"
    a = _piece(tmp_path / "p01", "study-s01", [0, 1], dataclasses.replace(tables, runs=runs))
    b = _piece(tmp_path / "p23", "study-s23", [2, 3], dataclasses.replace(tables, runs=runs))
    out = tmp_path / "merged"
    with pytest.raises(
        ValueError, match=r"group 'pgd' was trained under other settings .*train.precision 'bf16' vs 'fp32'"
    ):
        merge_experiments([a, b], "m", storage=out, **QUIET)
    assert not out.exists()
    same = _piece(tmp_path / "q23", "study-s23", [2, 3], dataclasses.replace(tables, runs=bf16))
    # other seeds draw other pools (per-seed design): pool_seed differs and is not a problem
    assert merge_experiments([a, same], "m", storage=out, **QUIET) == out / "m"


def test_a_piece_is_checked_against_the_kept_ones_before_it_trains(tmp_path):
    """`plan_problems`: the spec's groups as they resolve here, beside a kept piece's runs table. A
    piece collected from this very plan passes; one whose groups trained at another precision (the
    other kind of CPU) is named with the setting, before anything would train."""
    from orchestrator.collect import flatten
    from orchestrator.merge import plan_problems

    spec_path = ROOT / "search_spaces" / "quickstart.yaml"
    groups = load_spec(spec_path, check_data=False).groups()
    rows = [
        {
            "group_label": g.label,
            "group_id": g.group_id,
            "seed": s,
            **{f"config.{k}": v for k, v in flatten(g.run).items()},
        }
        for g in groups
        for s in (0, 1)
    ]
    here = pd.DataFrame(rows).assign(**{"config.seed": lambda f: f["seed"]})
    tables = _tables()
    same = _piece(tmp_path / "same", "quickstart-s0", [0], dataclasses.replace(tables, runs=here))
    assert plan_problems(spec_path, [same]) == []
    mine = here["config.train.precision"].iloc[0]
    other = "fp32" if mine == "bf16" else "bf16"
    elsewhere = here.assign(**{"config.train.precision": other, "group_id": here["group_id"] + "x"})
    away = _piece(tmp_path / "away", "quickstart-s1", [1], dataclasses.replace(tables, runs=elsewhere))
    problems = plan_problems(spec_path, [away])  # the plan here against a piece from the other CPU
    assert len(problems) == len(groups) and all(p.startswith(f"{spec_path}, as planned here:") for p in problems)
    assert all(f"train.precision '{other}' vs '{mine}'" in p for p in problems)
    assert len(plan_problems(spec_path, [same, away])) == len(groups)  # the kept pieces disagree too


def test_a_symlinked_or_oversized_table_is_refused(pieces, tmp_path, monkeypatch):
    import orchestrator.merge as merge

    _, a, b = pieces
    (b / "audits.parquet").unlink()
    (b / "audits.parquet").symlink_to(a / "audits.parquet")
    with pytest.raises(ValueError, match="not a plain file"):
        merge_experiments([a, b], "m", storage=tmp_path / "out", **QUIET)
    (b / "audits.parquet").unlink()
    (b / "audits.parquet").write_bytes((a / "audits.parquet").read_bytes())
    monkeypatch.setattr(merge, "MAX_TABLE_BYTES", 100)
    with pytest.raises(ValueError, match="larger than"):
        merge_experiments([a, b], "m", storage=tmp_path / "out", **QUIET)
    assert not (tmp_path / "out").exists()


def test_the_command_line_reports_problems_with_exit_2(pieces, tmp_path, capsys):
    _, a, b = pieces
    assert main(["merge", str(a), str(b), "--name", "m", "--storage", str(tmp_path / "o")]) == 0
    assert main(["merge", str(a), str(b), "--name", "m", "--storage", str(tmp_path / "o")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_piece_is_the_spec_with_fewer_seeds_and_the_same_groups(tmp_path, capsys):
    from orchestrator.merge import piece_spec

    path = ROOT / "search_spaces" / "quickstart.yaml"
    name, text = piece_spec(path, [3, 4])
    (tmp_path / "piece.yaml").write_text(text)
    piece, whole = load_spec(tmp_path / "piece.yaml", check_data=False), load_spec(path, check_data=False)
    assert name == piece.name == "quickstart-s3-4" and list(piece.seeds) == [3, 4]
    assert [g.group_id for g in piece.groups()] == [g.group_id for g in whole.groups()]
    # a seed the spec does not have is refused before Ray starts or anything is written
    assert main(["run", str(path), "--seeds", "3,99", "--storage", str(tmp_path / "r")]) == 2
    assert "name distinct seeds among the spec's 0, 1, 2, 3, 4, 5" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_seeds_are_read_as_the_spec_validator_reads_them(tmp_path, pieces):
    """A spec giving its seeds as `grid.seed` pieces into `seeds.train`, with the same groups; a
    piece whose pool design differs from the others' is refused."""
    from orchestrator.merge import piece_spec

    raw = {k: v for k, v in SPEC.items() if k != "seeds"}
    raw["grid"] = {**SPEC["grid"], "seed": [0, 1, 2]}
    path = tmp_path / "grid_seeds.yaml"
    path.write_text(yaml.safe_dump(raw))
    _, text = piece_spec(path, [1])
    (tmp_path / "piece.yaml").write_text(text)
    piece, whole = load_spec(tmp_path / "piece.yaml", check_data=False), load_spec(path, check_data=False)
    assert list(piece.seeds) == [1] and piece.seed_pool == whole.seed_pool == "same"
    assert [g.group_id for g in piece.groups()] == [g.group_id for g in whole.groups()]

    tables, a, _ = pieces
    same_pool = dict(SPEC, seeds={**SPEC["seeds"], "pool": "same"})
    c = _piece(tmp_path / "p4", "study-s4", [4], tables, spec=same_pool)
    with pytest.raises(ValueError, match="differs .* in seeds.pool"):
        merge_experiments([a, c], "m", storage=tmp_path / "out", **QUIET)
    assert not (tmp_path / "out").exists()
