#!/usr/bin/env bash
# Everything that needs a GPU, in one call of about 9 minutes at most (a lent GPU is billed by the second, a
# call may run 10 minutes): the CUDA tests (region_impl=varlen against the dense reference among them),
# bench_gpu.py (the attention table with its varlen columns, the region_impl=auto and varlen rows of the network
# table), and a short bf16 training run on the embedded CT set as trainer=gpu configures it (model.compile=auto:
# compiled on CUDA; model.cuda_graph=auto), its first step's compile time grepped. Logs and JSON go to $1.
#   bash benchmarks/gpu_check.sh [out_dir]
# Environment: GPU_TESTS (test files), BENCH_ARGS (extra bench_gpu.py arguments), TRAIN_STEPS (0: no training
# run), TRAIN_ARGS (its overrides), PROFILE_ARGS (profile_step.py runs, ';'-separated; empty: none), *_TIMEOUT (s).
# Where the GPU machine's Python lacks hydra-core / omegaconf / antlr4-python3-runtime / pydicom and cannot
# reach PyPI, put their wheels in .whl/ (docs/performance.md, "GPU: how it is measured"); RATLIT_CACHE may point at a copy of the
# embedded data to skip building it.
set -uo pipefail
out=${1:-${OUT:-gpu_check_out}}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

start=$SECONDS
timeout "${TESTS_TIMEOUT:-170}" python3 -m pytest -q -m gpu -p no:cacheprovider \
  ${GPU_TESTS:-tests/test_varlen.py tests/test_cuda_graph.py tests/test_attention.py tests/test_rat.py tests/test_losses.py} >"$out/gpu_tests.log" 2>&1
echo "gpu tests: status $? in $((SECONDS - start)) s: $(tail -n 1 "$out/gpu_tests.log")"

start=$SECONDS
bench_timeout=${BENCH_TIMEOUT:-270}
# The bench's own budget ends it cleanly, tables printed, before timeout would cut it off (a case may overrun).
timeout "$bench_timeout" python3 benchmarks/bench_gpu.py --json "$out/bench_gpu.json" --time-budget $((bench_timeout - 60)) \
  ${BENCH_ARGS---memory-budget 0.5 --network-filter region_impl=auto|varlen,batch=None} \
  >"$out/bench_gpu.md" 2>"$out/bench_progress.log"
echo "bench_gpu.py: status $? in $((SECONDS - start)) s"

if [ "${TRAIN_STEPS:-200}" -gt 0 ]; then
  start=$SECONDS
  export RATLIT_OUTPUTS=/tmp/ratlit_outputs
  timeout "${TRAIN_TIMEOUT:-100}" python3 -m ratlit.train task=ct trainer=gpu partition=slic ${TRAIN_ARGS-} \
    trainer.max_steps="${TRAIN_STEPS:-200}" trainer.val_check_interval="${TRAIN_STEPS:-200}" trainer.limit_val_batches=2 \
    trainer.limit_test_batches=4 data.num_workers=8 >"$out/train.log" 2>&1
  echo "training run (trainer=gpu ${TRAIN_ARGS-}): status $? in $((SECONDS - start)) s"
  grep -m 1 "compiled training" "$out/train.log"
  grep -m 1 "first training step" "$out/train.log"
  grep -m 1 "region_impl=auto" "$out/train.log"
  grep -m 2 "CUDA graph" "$out/train.log"
  tail -n 3 "$out/train.log"
  results=$(ls -t "$RATLIT_OUTPUTS"/runs/ct/*/results.json 2>/dev/null | head -n 1)
  [ -n "$results" ] && cp "$results" "$out/train_results.json"
fi

n=0
IFS=';' read -ra profiles <<< "${PROFILE_ARGS-}"  # e.g. "--attention rmsa;--attention msa"
for args in "${profiles[@]}"; do
  n=$((n + 1))
  timeout "${PROFILE_TIMEOUT:-60}" python3 benchmarks/profile_step.py $args >"$out/profile_$n.txt" 2>&1
  grep -m 1 "ms per step" "$out/profile_$n.txt" || tail -n 3 "$out/profile_$n.txt"
done

tail -n 60 "$out/bench_gpu.md"
