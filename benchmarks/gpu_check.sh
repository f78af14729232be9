#!/usr/bin/env bash
# Everything a CUDA machine checks, in one run that stays inside a budget:
#   1. benchmarks/gpu_idle.py --device cuda --graph --rounds 3 --plot (the
#      step as a CUDA graph: the GPU sets its pace),
#   2. benchmarks/gpu_idle.py --device cuda --plot (launch-bound eager step),
#      then its 8-producer rows again with --idle-producers,
#   3. benchmarks/launch_bound.py (how steady the eager step is, unfed),
#   4. the CUDA tests (pinned ring slots against real copies),
#   5. the throughput smoke run, the bridge's and the benchmarks' tests,
#   6. throughput at 512 B and 38.5 MB with this machine's cores,
#   7. the other tests (the machine's own numpy and Python), while time is
#      left.
#
#   OUT=dir BUDGET_S=500 [SKIP="eager tests"] bash benchmarks/gpu_check.sh
#
# SKIP names steps to leave out: graph eager idle launch cuda smoke
# benchmarks throughput tests.
#
# On an H100 with 16 CPUs (2026-11-26): gpu_idle --graph --rounds 3 took
# 126 s, gpu_idle 105 s, launch_bound under a minute, the CUDA tests about
# a minute, throughput at 512 B and 38.5 MB 27 s (3 rounds; it runs 5);
# starting the machine took under a minute.
#
# Logs, JSON and the plot go to $OUT (default benchmarks/results). Wheels in
# .whl/ (pyzmq for the bridge rows) are installed first when present.
# GPU_IDLE="--device torch-cpu --quick" LAUNCH_BOUND="--device cpu --quick"
# try the script on a machine without a GPU.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
BUDGET_S=${BUDGET_S:-500}
read -r -a GPU_IDLE <<< "${GPU_IDLE:---device cuda}"
read -r -a LAUNCH_BOUND <<< "${LAUNCH_BOUND:---device cuda}"
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
LOG=$OUT/gpu_check.log

left() { echo $((BUDGET_S - SECONDS)); }
step() {  # step ID NAME SECONDS COMMAND...: run with a timeout, log, go on
    local id=$1 name=$2 limit=$3
    shift 3
    if [[ " ${SKIP:-} " == *" $id "* ]]; then
        echo "== $name: skipped (SKIP)" | tee -a "$LOG"
        return
    fi
    if [ "$(left)" -lt "$limit" ]; then limit=$(left); fi
    if [ "$limit" -lt 20 ]; then
        echo "== $name: skipped, $(left) s left" | tee -a "$LOG"
        return
    fi
    echo "== $name (at ${SECONDS} s, limit ${limit} s)" | tee -a "$LOG"
    timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$LOG"
    echo "== $name: exit ${PIPESTATUS[0]} after ${SECONDS} s" | tee -a "$LOG"
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
    python3 -c "import sys, numpy, torch; print(sys.version.split()[0], 'numpy',
numpy.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"
    python3 -c "import zmq; print('pyzmq', zmq.__version__)" || echo "no pyzmq"
    nproc; df -h /dev/shm | tail -1
} 2>&1 | tee "$LOG"

step graph "gpu_idle --graph" 240 python3 benchmarks/gpu_idle.py "${GPU_IDLE[@]}" \
    --graph --rounds 3 --plot --out "$OUT/gpu_idle_cuda_graph.json"
step eager "gpu_idle" 230 python3 benchmarks/gpu_idle.py "${GPU_IDLE[@]}" --plot \
    --out "$OUT/gpu_idle_cuda.json"
step idle "gpu_idle --idle-producers, 8 producers" 120 python3 benchmarks/gpu_idle.py \
    "${GPU_IDLE[@]}" --idle-producers --workers 8 --only "Prefetcher w=8" --plot \
    --out "$OUT/gpu_idle_cuda_idle.json"
step launch "launch_bound" 90 python3 benchmarks/launch_bound.py "${LAUNCH_BOUND[@]}" \
    --out "$OUT/launch_bound_cuda.json"
step cuda "CUDA tests" 90 python3 -m pytest -p no:cacheprovider -v -rfE --tb=short \
    tests/test_cuda.py tests/test_pinning.py
# the smoke run as a script first, so that a failure shows its traceback
step smoke "throughput --quick" 60 python3 benchmarks/throughput.py --quick \
    --sizes "512 B" "1 MiB" --out "${TMPDIR:-/tmp}/throughput_quick.json"
step benchmarks "bridge and benchmark tests" 150 python3 -m pytest -p no:cacheprovider \
    -v -rfE --tb=short tests/test_bridge.py tests/test_benchmarks.py
step throughput "throughput, 512 B and 38.5 MB" 100 python3 benchmarks/throughput.py \
    --sizes "512 B" "38.5 MB" --only memcpy "bare shm" Prefetcher pyzmq --repeat 5 \
    --out "$OUT/throughput_gpu_machine.json"
step tests "the other tests" 150 python3 -m pytest -p no:cacheprovider -q -rfE --tb=short \
    --ignore=tests/test_cuda.py --ignore=tests/test_pinning.py \
    --ignore=tests/test_bridge.py --ignore=tests/test_benchmarks.py
echo "== done at ${SECONDS} s" | tee -a "$LOG"
