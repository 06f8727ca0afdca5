"""One experiment from the pieces of a study that was run a few seeds at a time.

A study too long for one sitting (a session, a reserved machine, a night) can run as several
experiments of the same spec, each with some of its training seeds. Their group ids are the same
(a group id is the resolved config without the seed), so their tables concatenate into the tables
of the whole study: `demem merge` checks that the pieces are one spec apart from `name` and
`seeds.train`, that no seed is in two pieces, and writes a new experiment directory holding the
merged spec (the union of the seeds), meta.json naming the pieces, and the concatenated Parquet
tables. `demem summarize` then treats it like any finished experiment: its intervals run over every
seed of every piece, and the forest plot's choice of attack sees half of them.

The pieces are read, never run or written: the spec through the bounded spec reader, the tables as
Parquet (no unpickling), each table file at most MAX_TABLE_BYTES. Ray-free.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from demem import __version__
from demem.artifacts import PER_MODEL_KEYS
from demem.io import write_json, write_parquet, write_text
from orchestrator.collect import flatten
from orchestrator.layout import EPSILON, RUNS, SPEC, TABLES, ExperimentDir, read_json
from orchestrator.spec import ExperimentSpec, load_spec
from orchestrator.spec.reader import read_spec
from orchestrator.spec.schema import SpecError, name_problem, validate

MAX_TABLE_BYTES = 256 << 20  # a paper-scale experiment's largest table (samples.parquet) is under 64 MiB
OPTIONAL = (EPSILON,)  # tables that experiments collected by older versions lack
# config columns in which one group's models differ between seeds (a seed's own pool, per-seed design)
PER_DRAW = {"config." + ".".join(k) for k in PER_MODEL_KEYS} | {"config.data.pool_seed"}


def _seedless(raw: dict[str, Any]) -> dict[str, Any]:
    """A raw spec without what may differ between pieces: its name and its training seeds, given
    (as `check_seeds` reads them) as `seeds` or as `grid.seed`."""
    d = copy.deepcopy(raw)
    d.pop("name", None)
    d.pop("seeds", None)
    if isinstance(d.get("grid"), dict):
        d["grid"].pop("seed", None)
    return d


def _spec(path: str | Path) -> tuple[dict[str, Any], ExperimentSpec]:
    """The raw spec at `path` and its validated form (seeds and pool design as the runner reads them)."""
    raw = read_spec(path)
    return raw, validate(copy.deepcopy(raw), check_data=False)  # SpecError for anything not a valid spec


def piece_spec(spec_path: str | Path, seeds: list[int], name: str | None = None) -> tuple[str, str]:
    """(name, text) of the spec that runs only `seeds` of `spec_path`'s training seeds: the same
    settings, so the same group ids, under `name` (default: the spec's name + "-s" + the seeds).
    SpecError when a seed is not the spec's or the list is empty or repeats one."""
    raw, spec = _spec(spec_path)
    if not seeds or len(set(seeds)) < len(seeds) or not set(seeds) <= set(spec.seeds):
        have = ", ".join(map(str, spec.seeds))
        raise SpecError([f"--seeds {','.join(map(str, seeds))}: name distinct seeds among the spec's {have}"])
    piece = _seedless(raw)
    piece["name"] = name or f"{spec.name}-s{'-'.join(map(str, seeds))}"
    piece["seeds"] = {"train": list(seeds), "pool": spec.seed_pool}
    text = (
        f"# {Path(spec_path).name} with training seeds {', '.join(map(str, seeds))} only "
        "(`demem run --seeds`; `demem merge` joins the pieces)\n" + yaml.safe_dump(piece, sort_keys=False)
    )
    return piece["name"], text


def _read_piece(path: Path) -> tuple[dict[str, Any], ExperimentSpec]:
    """A piece's raw and validated spec; ValueError when it is not a finished experiment."""
    exp = ExperimentDir(path)
    if not exp.spec.is_file():
        raise FileNotFoundError(f"{path} is not an experiment directory (no {SPEC})")
    missing = [t for t in TABLES if t not in OPTIONAL and not exp.table(t).is_file()]
    if missing:
        raise ValueError(
            f"{path} has no {', '.join(missing)}: finish it first (`demem resume {path}`, then `demem summarize`)"
        )
    for t in TABLES:
        f = exp.table(t)
        if f.is_symlink() or (f.exists() and not f.is_file()):
            raise ValueError(f"{f}: not a plain file")
        if f.is_file() and f.stat().st_size > MAX_TABLE_BYTES:
            raise ValueError(f"{f}: larger than {MAX_TABLE_BYTES >> 20} MiB; not a table demem wrote")
    return _spec(exp.spec)


def plan_problems(spec_path: str | Path, pieces: list[str | Path]) -> list[str]:
    """What `_group_problems` says of `spec_path`'s groups as they resolve on this machine beside the
    finished `pieces` of it: run before training a piece, so that one which would be other groups
    (another precision here) is refused before the hours it takes, not at `demem merge`."""
    groups = load_spec(spec_path, check_data=False).groups()
    plan = pd.DataFrame(
        [
            {"group_label": g.label, "group_id": g.group_id, **{f"config.{k}": v for k, v in flatten(g.run).items()}}
            for g in groups
        ]
    )
    kept = [Path(p) for p in pieces]
    runs = [pd.read_parquet(ExperimentDir(p).table(RUNS)) for p in kept]
    return _group_problems([*kept, Path(f"{spec_path}, as planned here")], [*runs, plan])


def _group_problems(paths: list[Path], runs: list[pd.DataFrame]) -> list[str]:
    """Pieces of one spec whose groups are not the same groups: a label under another group id, the
    settings having resolved differently where the piece ran (`train.precision: auto` is bf16 on a
    machine with native bf16 and fp32 elsewhere), named by the config columns that differ."""
    problems, seen = [], {}  # label -> (piece, its models' config row)
    for path, frame in zip(paths, runs):
        if not {"group_label", "group_id"} <= set(frame.columns):
            continue
        config = [c for c in frame.columns if c.startswith("config.")]
        for label, rows in frame.groupby("group_label", sort=False):
            row = rows.iloc[0]
            if label not in seen:
                seen[label] = (path, row)
                continue
            other_path, other = seen[label]
            if row["group_id"] != other["group_id"]:
                differ = [
                    f"{c.removeprefix('config.')} {other[c]!r} vs {row[c]!r}"
                    for c in config
                    if c in other.index and c not in PER_DRAW and str(other[c]) != str(row[c])
                ]
                problems.append(
                    f"{path}: its group {label!r} was trained under other settings than in {other_path} "
                    f"({'; '.join(differ) or 'another group id'}); rerun it where they resolve the same, "
                    "or fix them in the spec"
                )
    return problems


def merge_experiments(pieces: list[str | Path], name: str, storage: str | Path = "results", echo=print) -> Path:
    """Write the experiment `storage/name` from `pieces` (see the module docstring). Every check runs
    before anything is written; the directory must not exist yet."""
    if (why := name_problem(name, "--name")) is not None:
        raise SpecError([why])
    if len(pieces) < 2:
        raise ValueError("name at least two experiments to merge")
    paths = [Path(p) for p in pieces]
    if len(set(p.resolve() for p in paths)) < len(paths):
        raise ValueError("an experiment is named twice")
    out = Path(storage) / name
    if out.exists() or out.is_symlink():
        raise FileExistsError(f"{out} already exists; name a new experiment")
    read = [_read_piece(p) for p in paths]
    first, pool = _seedless(read[0][0]), read[0][1].seed_pool
    problems, owner = [], {}
    for path, (raw, spec) in zip(paths, read):
        mine = _seedless(raw)
        differ = [k for k in sorted(set(first) | set(mine)) if first.get(k) != mine.get(k)]
        if spec.seed_pool != pool:
            differ.append("seeds.pool")
        if differ:
            problems.append(
                f"{path}: its spec differs from {paths[0]}'s in {', '.join(differ)} (only name and "
                "seeds.train may differ)"
            )
        for s in spec.seeds:
            if s in owner:
                problems.append(f"seed {s} is in both {owner[s]} and {path}")
            owner.setdefault(s, path)
    frames = {t: [pd.read_parquet(f) for p in paths if (f := ExperimentDir(p).table(t)).is_file()] for t in TABLES}
    if not problems:
        problems = _group_problems(paths, frames[RUNS])
    if problems:
        raise ValueError("cannot merge:\n  " + "\n  ".join(problems))
    merged = {**first, "name": name, "seeds": {"train": sorted(owner), "pool": pool}}
    spec_text = (
        f"# {name}: the experiments {', '.join(p.name for p in paths)} merged by `demem merge` "
        "(one spec, disjoint training seeds)\n" + yaml.safe_dump(merged, sort_keys=False)
    )
    tables: dict[str, pd.DataFrame] = {}
    for t in TABLES:
        if frames[t]:
            df = pd.concat(frames[t], ignore_index=True)
            if "experiment" in df.columns:
                df["experiment"] = name
            tables[t] = df
    out.mkdir(parents=True)
    write_text(out / SPEC, spec_text)
    load_spec(out / SPEC, check_data=False)  # the merged spec is a valid spec (it is the pieces' own)
    sources = []
    for path, (_, spec) in zip(paths, read):
        meta = read_json(ExperimentDir(path).meta, {}) or {}
        sources.append({"experiment": str(path), "name": spec.name, "seeds": list(spec.seeds), "meta": meta})
    write_json(
        out / "meta.json", {"demem_version": __version__, "merged": time.time(), "name": name, "pieces": sources}
    )
    exp = ExperimentDir(out)
    for t, df in tables.items():
        write_parquet(exp.table(t), df)
    echo(f"merged {len(paths)} experiments ({len(owner)} seeds: {', '.join(map(str, sorted(owner)))}) into {out}")
    echo(f"next: demem summarize {out}")
    return out
