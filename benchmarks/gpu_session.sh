#!/usr/bin/env bash
# gpu_session.sh start|finish|table: the GPU checks of a device session. start and finish are two
# calls, so that a bench longer than one call's 10-minute limit still runs to its end, untouched
# by anything else; table is one call (~6 minutes).
#
#   start   unpack the offline bundle and Fashion-MNIST (see gpu_bench.sh), time the plain
#           PyTorch loop of every family at the gpu preset's batch (one GPU, bf16), then start
#           `genbench bench --preset gpu --gpu` in its own session (it outlives this call) and
#           wait for it up to $WAIT seconds (default 540 minus the set-up).
#   finish  wait for the bench up to $WAIT seconds (default 100), then compare each of its
#           training runs with the plain loop (python -m benchmarks.train_throughput --against) and
#           copy everything to $OUT.
#   table   the throughput table (benchmarks.train_throughput --gpu, new runs at the gpu
#           preset's batch and log interval) into $OUT/throughput.md, after timing the imports
#           of a new process before and after the bundle's bytecode is compiled.
#
# Both phases leave in $OUT: bench.log, stages.md (wall and CPU seconds per stage), report.md,
# report.html, plain.jsonl and, after finish, throughput.md. Run from the repo root with .gpu/
# (bundle/ and fmnist/) beside the code, e.g. device tool: "bash benchmarks/gpu_session.sh start"
# with carry [".gpu"], then at once "bash benchmarks/gpu_session.sh finish".
set -uo pipefail
phase=${1:?usage: gpu_session.sh start|finish}
OUT=${OUT:-$PWD/gpu_out}
W=/tmp/genbench-gpu      # the bench's working directory: MLflow store, cache, reports
repo=$PWD
t0=$(date +%s)
mkdir -p "$OUT" "$W"
. .gpu/bundle/INSTALL.sh >/dev/null || exit 1
export PYTHONPATH="$repo:$PYTHONPATH" PYTHONUNBUFFERED=1 RAY_TRAIN_V2_ENABLED=1 \
       MLFLOW_TRACKING_URI="sqlite:///$W/mlflow.db" GENBENCH_CACHE="$W/cache" \
       MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false

bench_running() { pgrep -f "genbench bench --preset gpu" >/dev/null; }

wait_and_copy() {  # $1: seconds to wait for the bench at most
    local until=$(( $(date +%s) + $1 ))
    while bench_running && [ "$(date +%s)" -lt "$until" ]; do sleep 5; done
    bench_running && echo "bench still running after $(( $(date +%s) - $(cat $W/started) )) s"
    bench_running || echo "bench ended: $(tail -1 $W/harness.txt 2>/dev/null)"
    sed -n '/^| stage |/,$p' "$W/harness.txt" > "$OUT/stages.md" 2>/dev/null
    cp "$W/bench.log" "$W/plain.jsonl" "$OUT/" 2>/dev/null
    cp "$W"/reports/gpu-bench/report.md "$W"/reports/gpu-bench/report.html "$OUT/" 2>/dev/null
    grep -E "^\[[0-9]+/[0-9]+\]|finished in|failed|report" "$W/bench.log" | tail -40
    cat "$OUT/stages.md"
}

unpack_data() {
    local data=/usr/share/datasets/fashion-mnist    # where genbench looks for it first
    mkdir -p "$data"
    for f in .gpu/fmnist/*.xz; do xz -dc "$f" > "$data/$(basename "$f" .xz)"; done
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
}

compile_bundle() {
    # The bundle is unpacked without bytecode, and where PYTHONDONTWRITEBYTECODE is set every new
    # process (each Ray worker and actor) compiles Ray and MLflow from source again. pip compiles
    # at install time, so a user's machine does not pay this.
    timeout 180 python3 -m compileall -q -j 0 /tmp/site > /dev/null
    echo "bytecode compiled at $(( $(date +%s) - t0 )) s"
}

if [ "$phase" = table ]; then
    unpack_data
    echo "setup $(( $(date +%s) - t0 )) s; $(nproc) CPUs;" \
         "PYTHONDONTWRITEBYTECODE=${PYTHONDONTWRITEBYTECODE:-}"
    TIMEFORMAT="import ray.train.torch, mlflow in a new process: %R s wall, %U+%S s CPU"
    time python3 -c "import ray.train.torch, mlflow"
    time python3 -c "import ray.train.torch, mlflow"
    compile_bundle
    time python3 -c "import ray.train.torch, mlflow"
    set -o pipefail
    timeout "${TABLE_LIMIT:-400}" python3 -m benchmarks.train_throughput --gpu --batch 256 \
        --log-every 50 --checkpoint-every 500 --steps 1500 --steps-of pixelcnn=1000 \
        --steps-of transformer=800 2>&1 | tee "$OUT/throughput.md"
    echo "table ended with code $? at $(( $(date +%s) - t0 )) s"
    exit 0
fi

if [ "$phase" = start ]; then
    unpack_data
    compile_bundle
    echo "setup $(( $(date +%s) - t0 )) s; $(nproc) CPUs"
    # the gpu preset's batch, 1000 steps (400, 1.4 s for the AE, were too few to trust)
    for f in ae vae gan pixelcnn transformer; do
        GENBENCH_BENCH_SETS='["train.batch_size=256"]' timeout 90 python3 \
            -m benchmarks.train_throughput --plain "$f" --steps 1000 --log-every 100 \
            --threads 1 --gpu >> "$W/plain.jsonl" || echo "plain loop $f failed"
    done
    cat "$W/plain.jsonl"
    echo "plain loops done at $(( $(date +%s) - t0 )) s"
    date +%s > "$W/started"
    (cd "$W" && setsid nohup python3 -m benchmarks.stage_times --log "$W/bench.log" \
        -- python3 -m genbench bench --preset gpu --gpu --experiment gpu-bench \
        > "$W/harness.txt" 2>&1 < /dev/null &)
    sleep 5
    wait_and_copy "${WAIT:-$(( 540 - ($(date +%s) - t0) ))}"
else
    wait_and_copy "${WAIT:-100}"
    timeout "${AGAINST_LIMIT:-60}" python3 -m benchmarks.train_throughput --gpu \
        --against gpu-bench --plain-json "$W/plain.jsonl" --steps 1000 --log-every 100 \
        > "$OUT/throughput.md" 2> "$W/against.err" || tail -5 "$W/against.err"
    cat "$OUT/throughput.md"
fi
