#!/bin/bash
# Runs pieces of the second study one after another and keeps each finished piece's tables in
# docs/study2/data/<piece>/ (spec, meta, Parquet), so a session's end loses at most the piece in flight:
#
#     docs/study2/run.sh search_spaces/study2_fashion.yaml 3 4    # run A, seeds 3 and 4
#
# Experiments go to $STUDY_RESULTS (default /tmp/study2-results); progress to <piece>.log there.
set -u
spec=$1; shift
here=$(cd "$(dirname "$0")/../.." && pwd)
results=${STUDY_RESULTS:-/tmp/study2-results}
export RAY_AUTH_MODE=disabled RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_TMPDIR=${RAY_TMPDIR:-/tmp/ray_study2}
mkdir -p "$results"
cd "$here"
# A piece must train the run's groups. `train.precision: auto` resolves per machine (bf16 with native
# bf16, fp32 without), and the group ids carry it: a piece run elsewhere would be other groups, which
# `demem merge` refuses. So check against the pieces already kept before training anything.
.venv/bin/python - "$spec" <<'PY' || exit 2
import sys
from pathlib import Path

from orchestrator.merge import plan_problems
from orchestrator.spec import load_spec

kept = sorted(Path("docs/study2/data").glob(f"{load_spec(sys.argv[1], check_data=False).name}-s*"))
if problems := plan_problems(sys.argv[1], kept):
    sys.exit("run this piece on a machine like the kept pieces' (docs/study2/data/README.md):\n  " + "\n  ".join(problems))
PY
for seed in "$@"; do
  name=$(.venv/bin/python -c "import sys; from orchestrator.merge import piece_spec; print(piece_spec(sys.argv[1], [int(sys.argv[2])])[0])" "$spec" "$seed") || exit 2
  echo "$(date -u +%FT%T) start $name at $(git rev-parse --short HEAD)"
  if [ -f "$results/$name/spec.yaml" ]; then
    .venv/bin/demem resume "$results/$name" > "$results/$name.log" 2>&1
  else
    .venv/bin/demem run "$spec" --seeds "$seed" --storage "$results" > "$results/$name.log" 2>&1
  fi || { echo "$(date -u +%FT%T) $name failed: see $results/$name.log"; exit 1; }
  .venv/bin/demem summarize "$results/$name" >> "$results/$name.log" 2>&1
  mkdir -p "docs/study2/data/$name"
  cp "$results/$name/spec.yaml" "$results/$name/meta.json" "$results/$name"/*.parquet "docs/study2/data/$name/"
  echo "$(date -u +%FT%T) done $name: docs/study2/data/$name"
done
