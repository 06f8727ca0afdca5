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
from demem.io import write_json, write_parquet, write_text
from orchestrator.layout import EPSILON, SPEC, TABLES, ExperimentDir, read_json
from orchestrator.spec import load_spec
from orchestrator.spec.reader import read_spec
from orchestrator.spec.schema import SpecError, name_problem

MAX_TABLE_BYTES = 256 << 20  # a paper-scale experiment's largest table (samples.parquet) is under 64 MiB
OPTIONAL = (EPSILON,)  # tables that experiments collected by older versions lack


def _without_seeds(raw: dict[str, Any]) -> dict[str, Any]:
    d = copy.deepcopy(raw)
    d.pop("name", None)
    seeds = d.get("seeds")
    if isinstance(seeds, dict):
        seeds.pop("train", None)
    return d


def _train_seeds(raw: dict[str, Any], where: Path) -> list[int]:
    seeds = raw.get("seeds", {}).get("train") if isinstance(raw.get("seeds"), dict) else None
    if isinstance(seeds, int):
        seeds = [seeds]
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SpecError([f"{where}: seeds.train must be a list of integers"])
    return seeds


def piece_spec(spec_path: str | Path, seeds: list[int], name: str | None = None) -> tuple[str, str]:
    """(name, text) of the spec that runs only `seeds` of `spec_path`'s training seeds: the same
    settings, so the same group ids, under `name` (default: the spec's name + "-s" + the seeds).
    SpecError when a seed is not the spec's or the list is empty or repeats one."""
    raw = read_spec(spec_path)
    if not isinstance(raw, dict):
        raise SpecError([f"{spec_path}: not a mapping of settings"])
    have = _train_seeds(raw, Path(spec_path))
    if not seeds or len(set(seeds)) < len(seeds) or not set(seeds) <= set(have):
        raise SpecError(
            [f"--seeds {','.join(map(str, seeds))}: name distinct seeds among the spec's {', '.join(map(str, have))}"]
        )
    piece = copy.deepcopy(raw)
    piece["name"] = name or f"{raw.get('name')}-s{'-'.join(map(str, seeds))}"
    piece["seeds"] = {**piece["seeds"], "train": list(seeds)}
    text = (
        f"# {Path(spec_path).name} with training seeds {', '.join(map(str, seeds))} only "
        "(`demem run --seeds`; `demem merge` joins the pieces)\n" + yaml.safe_dump(piece, sort_keys=False)
    )
    return piece["name"], text


def _read_piece(path: Path) -> tuple[dict[str, Any], list[int]]:
    """A piece's raw spec and training seeds; ValueError when it is not a finished experiment."""
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
    raw = read_spec(exp.spec)
    if not isinstance(raw, dict):
        raise SpecError([f"{exp.spec}: not a mapping of settings"])
    return raw, _train_seeds(raw, exp.spec)


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
    first, problems, owner = _without_seeds(read[0][0]), [], {}
    for path, (raw, seeds) in zip(paths, read):
        if _without_seeds(raw) != first:
            keys = sorted(set(first) | set(_without_seeds(raw)))
            differ = [k for k in keys if first.get(k) != _without_seeds(raw).get(k)]
            problems.append(
                f"{path}: its spec differs from {paths[0]}'s in {', '.join(differ)} (only name and "
                "seeds.train may differ)"
            )
        for s in seeds:
            if s in owner:
                problems.append(f"seed {s} is in both {owner[s]} and {path}")
            owner.setdefault(s, path)
    if problems:
        raise ValueError("cannot merge:\n  " + "\n  ".join(problems))
    merged = copy.deepcopy(read[0][0])
    merged["name"] = name
    merged["seeds"] = {**merged.get("seeds", {}), "train": sorted(owner)}
    spec_text = (
        f"# {name}: the experiments {', '.join(p.name for p in paths)} merged by `demem merge` "
        "(one spec, disjoint training seeds)\n" + yaml.safe_dump(merged, sort_keys=False)
    )
    tables: dict[str, pd.DataFrame] = {}
    for t in TABLES:
        frames = [pd.read_parquet(ExperimentDir(p).table(t)) for p in paths if ExperimentDir(p).table(t).is_file()]
        if frames:
            df = pd.concat(frames, ignore_index=True)
            if "experiment" in df.columns:
                df["experiment"] = name
            tables[t] = df
    out.mkdir(parents=True)
    write_text(out / SPEC, spec_text)
    load_spec(out / SPEC, check_data=False)  # the merged spec is a valid spec (it is the pieces' own)
    sources = []
    for path, (raw, seeds) in zip(paths, read):
        meta = read_json(ExperimentDir(path).meta, {}) or {}
        sources.append({"experiment": str(path), "name": raw.get("name"), "seeds": seeds, "meta": meta})
    write_json(
        out / "meta.json", {"demem_version": __version__, "merged": time.time(), "name": name, "pieces": sources}
    )
    exp = ExperimentDir(out)
    for t, df in tables.items():
        write_parquet(exp.table(t), df)
    echo(f"merged {len(paths)} experiments ({len(owner)} seeds: {', '.join(map(str, sorted(owner)))}) into {out}")
    echo(f"next: demem summarize {out}")
    return out
