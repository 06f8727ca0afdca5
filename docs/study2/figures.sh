#!/bin/bash
# The second study's summaries and the page's figures from the kept pieces (docs/study2/data/):
# each run's pieces merged (`demem merge`), summarized (the repeat and run B with run A's choice of attacks,
# `--forest-from`), and its forest and Pareto plots copied to docs/img/study2_<run>_{forest,pareto}.png.
# Then the page's tables: docs/study2.py, written into docs/results.md's tables block, and question 4's
# figure, docs/img/study2_defences_tradeoff.png.
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
out=${STUDY_SUMMARIES:-/tmp/study2-summaries}
cd "$here"
rm -rf "$out" && mkdir -p "$out"
# The Pareto plots and rankings use the page's headline attack (docs/study2.py's rule, on run A's
# selection seeds), not `demem summarize`'s own default, so that the figures and the tables agree.
headline=$(.venv/bin/python - docs/study2/data/study2-fashion-s[0-9]* <<'PY'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("study2", "docs/study2.py")
study2 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study2)
print(study2.Study(*sys.argv[1:]).headline_attack())
PY
)
for run in study2-fashion study2-defences study2-fashion-repeat; do
  pieces=$(ls -d docs/study2/data/$run-s[0-9]* 2>/dev/null || true)
  [ -n "$pieces" ] || continue
  if [ "$(echo "$pieces" | wc -l)" -eq 1 ]; then cp -r $pieces "$out/$run"; else
    .venv/bin/demem merge $pieces --name "$run" --storage "$out" > /dev/null; fi
  # The repeat and run B take run A's attacks per family and query kind, so they report every seed
  # (run B's PGD-AT is run A's, on the same pools: the choice saw it on seeds 0, 2, 4, never a defence).
  extra=()
  [ "$run" != study2-fashion ] && extra=(--forest-from "$out/study2-fashion")
  .venv/bin/demem summarize "$out/$run" --attack "$headline" "${extra[@]}" > "$out/$run.txt"
  for fig in forest pareto; do cp "$out/$run/summary/$fig.png" "docs/img/${run//-/_}_$fig.png"; done
done
runs=()
for run in a:study2-fashion b:study2-defences c:study2-fashion-repeat; do
  pieces=$(ls -d docs/study2/data/${run#*:}-s[0-9]* 2>/dev/null || true)
  [ -n "$pieces" ] && runs+=(--${run%%:*} $pieces)
done
.venv/bin/python docs/study2.py "${runs[@]}" --into docs/results.md --figure docs/img/study2_defences_tradeoff.png
echo "summaries in $out; figures in docs/img/; tables in docs/results.md"
