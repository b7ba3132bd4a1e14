export RATLIT_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
s=$SECONDS; timeout 100 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_attention.py tests/test_rat.py tests/test_losses.py tests/test_cuda_graph.py >$OUT/gpu_tests.log 2>&1; echo "tests $? $((SECONDS-s)) s: $(tail -n 1 $OUT/gpu_tests.log)"
s=$SECONDS; timeout 230 python3 benchmarks/bench_gpu.py --skip attention --memory-budget 0.5 --memory-budget 0.3 --network-filter "region_impl=auto,batch=None,checkpointing=False,attention=rmsa|msa" --json $OUT/bench_network.json >$OUT/bench_network.md 2>$OUT/bench_network.log; echo "network $? $((SECONDS-s)) s"
s=$SECONDS; timeout 90 python3 benchmarks/bench_gpu.py --skip network --json $OUT/bench_attention.json >$OUT/bench_attention.md 2>$OUT/bench_attention.log; echo "attention $? $((SECONDS-s)) s"
tail -n 22 $OUT/bench_network.md; tail -n 14 $OUT/bench_attention.md; grep -E "FAILED|Error" $OUT/gpu_tests.log | head -8
