#!/usr/bin/env bash
# gpu_bench.sh: `genbench bench --preset gpu --gpu` on a GPU machine that has torch but neither Ray
# nor MLflow (the lent device machines), with the wall and CPU time of every stage.
#
# Run from the repo root with two folders beside the code (git ignores .gpu/):
#   .gpu/bundle/   the offline bundle of ../shared/tools/gpu-bundle.sh (INSTALL.sh, site.tar.xz)
#   .gpu/fmnist/   Fashion-MNIST's four IDX files, each packed with xz
# e.g. through the device tool: command "bash benchmarks/gpu_bench.sh", carry [".gpu"].
#
# Writes to $OUT (default ./gpu_bench_out): bench.log (the bench's stderr), stages.md (wall and
# CPU seconds per stage), report.md and report.html. The bench stops after $BENCH_LIMIT seconds
# (default 420); the report is then written from what finished. Extra arguments go to the bench
# (e.g. --workers 1 --inception-weights PATH).
set -uo pipefail
OUT=${OUT:-$PWD/gpu_bench_out}
mkdir -p "$OUT"
t0=$(date +%s)
. .gpu/bundle/INSTALL.sh >/dev/null || exit 1
data=/usr/share/datasets/fashion-mnist          # where genbench looks for Fashion-MNIST first
mkdir -p "$data"
for f in .gpu/fmnist/*.xz; do xz -dc "$f" > "$data/$(basename "$f" .xz)"; done
work=$(mktemp -d /tmp/gpu_bench.XXXXXX)
export PYTHONPATH="$PWD:$PYTHONPATH" PYTHONUNBUFFERED=1 MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db" \
       GENBENCH_CACHE="$work/cache" RAY_TRAIN_V2_ENABLED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
echo "setup (bundle, data): $(( $(date +%s) - t0 )) s; $(nproc) CPUs"

repo=$PWD
cd "$work" || exit 1
python3 -m benchmarks.stage_times --limit "${BENCH_LIMIT:-420}" \
    --log "$OUT/bench.log" -- python3 -m genbench bench --preset gpu --gpu \
    --experiment gpu-bench "$@" 2> "$work/harness.txt"
code=$?
sed -n '/^| stage |/,$p' "$work/harness.txt" | tee "$OUT/stages.md"
echo "bench exit code $code; total $(( $(date +%s) - t0 )) s since the script started"
if [ ! -f reports/gpu-bench/report.html ]; then   # cut short: report what finished
    python3 -m genbench report --experiment gpu-bench --out reports/gpu-bench --force
fi
cp reports/gpu-bench/report.md reports/gpu-bench/report.html "$OUT"/ 2>/dev/null
grep -E "^\[[0-9]+/[0-9]+\]|finished in|failed|report:" "$OUT/bench.log" | tail -30
exit $code
