#!/usr/bin/env bash
set -uo pipefail
T0=$SECONDS
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpujob/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 RATLIT_CACHE=/tmp/cache
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_varlen.py > $OUT/varlen_tests.txt 2>&1
echo "varlen gpu tests: status $? after $((SECONDS - T0)) s"; tail -n 3 $OUT/varlen_tests.txt
timeout 95 python3 benchmarks/bench_gpu.py --skip network --time-budget 80 --json $OUT/bench_attention.json > $OUT/bench_attention.md 2> $OUT/bench_progress.log
echo "bench attention: status $? after $((SECONDS - T0)) s"; tail -n 14 $OUT/bench_attention.md
