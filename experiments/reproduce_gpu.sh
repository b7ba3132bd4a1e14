#!/usr/bin/env bash
# reproduce_cpu.sh's recipe (Table 4 and the partition axis, 3 seeds, the paired reports; experiment=cpu_ct on
# the embedded CT set) on one GPU, at the largest step count that fits a time budget. The tiny RAT leaves a GPU
# mostly idle, so PARALLEL runs share it; a calibration wave of PARALLEL short runs (R-MSA on SLIC, as many at
# once as the sweep will run) first measures the training speed and the fixed cost of a run (start-up,
# validation, test) under that sharing, and the step count is chosen from them:
#   steps = 0.85 x (time left / waves - fixed cost) x steps per second, in hundreds, at most MAX_STEPS.
# Every run: eager fp32 (TF32 matmuls at float32_matmul_precision=high), R-MSA's packed kernel, no CUDA graph.
#   BUDGET=400 PARALLEL=10 RESULTS=experiments/results/reproduce_gpu bash experiments/reproduce_gpu.sh
# Environment: BUDGET (seconds for calibration, sweep and reports; default 400), PARALLEL (10), CAL_STEPS
# (200), MAX_STEPS (4000), RUN_OVERRIDES (the GPU settings above), RESULTS, RATLIT_OUTPUTS; SEEDS and
# PARTITIONS as in reproduce_cpu.sh. The chosen steps and the calibration go to $RESULTS/calibration.json.
set -euo pipefail
start=$SECONDS
budget="${BUDGET:-400}"
parallel="${PARALLEL:-10}"
cal_steps="${CAL_STEPS:-200}"
results="${RESULTS:-experiments/results/reproduce_gpu}"
run_overrides="${RUN_OVERRIDES:-trainer=gpu trainer.precision=32-true model.compile=false model.cuda_graph=false \
model.net.region_impl=packed}"
calibration="${RATLIT_OUTPUTS:-outputs}/sweeps/reproduce_gpu_calibration/$(date +%Y-%m-%d_%H-%M-%S)"
mkdir -p "$calibration" "$results"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"

for ((i = 0; i < parallel; i++)); do
  # shellcheck disable=SC2086  # run_overrides: space-separated overrides
  python -m ratlit.train experiment=cpu_ct $run_overrides trainer.max_steps="$cal_steps" \
    trainer.val_check_interval="$cal_steps" trainer.limit_test_batches=null seed="$i" \
    hydra.run.dir="$calibration/run$i" > "$calibration/run$i.log" 2>&1 &
done
calibration_start=$SECONDS
wait
calibration_wall=$((SECONDS - calibration_start))

runs=$(LIST_RUNS=1 bash "$(dirname "$0")/reproduce_cpu.sh" | wc -l)  # SEEDS and PARTITIONS as it reads them
# 60 s of the time left: the LiteMedSAM cache check, collecting the runs, the two reports
steps=$(python - "$calibration" "$results/calibration.json" "$parallel" "$cal_steps" "$calibration_wall" "$runs" \
  $((budget - (SECONDS - start) - 60)) "${MAX_STEPS:-4000}" "$run_overrides" <<'PY'
import json, math, statistics, sys
from pathlib import Path

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
parallel, cal_steps, wall, runs, left, max_steps = (int(a) for a in sys.argv[3:9])
speeds = [json.loads(p.read_text())["speed"]["steps_per_sec"] for p in sorted(folder.glob("run*/results.json"))]
if len(speeds) < parallel:
    sys.exit(f"calibration: {len(speeds)} of {parallel} runs finished; see {folder}/run*.log")
rate = statistics.median(speeds)
fixed = max(0.0, wall - cal_steps / rate)
waves = math.ceil(runs / parallel)
fits = int(0.85 * (left / waves - fixed) * rate)
steps = min(max_steps, fits // 100 * 100)
if fits < 100:
    sys.exit(f"calibration: {rate:.1f} steps/s and {fixed:.0f} s a run leave no room for the sweep in {left} s")
record = {"parallel": parallel, "calibration_steps": cal_steps, "calibration_wall_s": wall, "steps_per_sec": speeds,
          "median_steps_per_sec": rate, "fixed_s_per_run": fixed, "runs": runs, "waves": waves,
          "seconds_left": left, "steps": steps, "run_overrides": sys.argv[9]}
out.write_text(json.dumps(record, indent=2) + "\n")
print(steps)
PY
)
echo "calibration: $parallel runs of $cal_steps steps in $calibration_wall s -> $steps steps a run ($runs runs)"
sweep_start=$SECONDS
STEPS="$steps" PARALLEL="$parallel" EXTRA="$run_overrides ${EXTRA:-}" RESULTS="$results" \
  bash "$(dirname "$0")/reproduce_cpu.sh"
echo "sweep and reports: $((SECONDS - sweep_start)) s; all: $((SECONDS - start)) s"
