#!/usr/bin/env bash
# One CIFAR-10 class on one GPU with the fast settings: the benchmark verb, then 15 epochs with
# per-epoch evaluation, and the figures the issue asks for (seconds per epoch, whole run, estimate
# for Table I = 10 classes x 3 seeds). Prepared for a GPU machine; not run in CI.
#
#   benchmarks/gpu_cifar10.sh /path/to/cifar10-jpeg75.tar.gz [CLASS] [more train options...]
#   COMPILE=default benchmarks/gpu_cifar10.sh ...    # also try torch.compile
set -euo pipefail
root=${1:?give the CIFAR-10 data root (archive or folder)}
class=${2:-automobile}
shift $(( $# < 2 ? $# : 2 ))
out=${OUT:-runs/gpu-cifar10}
compile=${COMPILE:-off}
python=${PYTHON:-python}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$python" -m skipganomaly benchmark --sizes 32,128 --device cuda --steps 20 \
    --score-images 4096 --json "$out/benchmark.json"
rm -rf "$out/$class-$compile"
start=$(date +%s.%N)
"$python" -m skipganomaly train --dataset cifar10 --data-root "$root" --abnormal-class "$class" \
    --epochs 15 --seed 0 --device cuda --precision auto --set train.channels_last=true \
    --set train.compile="$compile" --set data.eval_batch_size=1024 --quiet \
    --output "$out/$class-$compile" "$@"
end=$(date +%s.%N)
"$python" - "$out/$class-$compile/metrics.json" "$start" "$end" <<'PY'
import json, sys
metrics = json.load(open(sys.argv[1]))
wall = float(sys.argv[3]) - float(sys.argv[2])
epochs = [h["seconds"] for h in metrics["history"]]
print(f"per epoch (45,000 training images + scoring validation and test): first {epochs[0]:.1f} s, "
      f"median {sorted(epochs)[len(epochs) // 2]:.1f} s")
print(f"one class, 15 epochs + evaluation: {wall:.0f} s wall (including start-up and data loading); "
      f"test AUROC {metrics['test']['auroc']:.4f}")
print(f"Table I estimate (10 classes x 3 seeds, one GPU, one run at a time): {30 * wall / 60:.0f} min")
PY
