#!/usr/bin/env bash
# The GPU measurements of the project, one part after the other, each under its own time cap,
# the training step first. Tables (Markdown, with card, command and date) go to stdout and to
# $OUT/gpu_suite.md when $OUT is set (else benchmarks/results/gpu_suite.md); JSON next to it.
#
#   bash benchmarks/gpu_suite.sh              # on a GPU machine (about 10 minutes at most)
#   bash benchmarks/gpu_suite.sh --tiny       # CPU smoke run of the same parts (tiny config)
#   PARTS="step_s e2e_gpu" bash benchmarks/gpu_suite.sh   # a subset
#
# Parts (caps in seconds):
#   step_s     train_step ViT-S/16, 64/GPU, bf16, + bf16-vs-fp32 loss parity   (150)
#   step_b     train_step ViT-B/16, 32/GPU, bf16                               (100)
#   e2e_gpu    train_e2e ViT-S/16, nvJPEG + batched GPU augmentation, 15 workers (180)
#   loader_cpu train_e2e data pipeline alone, PIL augmentation in 15 workers   (100)
#   step_s_compile  train_step ViT-S/16 with torch.compile                     (180)
#   propagation, metrics, features: the label-propagation, metric and backbone harnesses on CUDA
#              (90 each; skipped with --tiny)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
TINY=""
[ "${1:-}" = "--tiny" ] && TINY="--tiny"
DEST=${OUT:-benchmarks/results}
mkdir -p "$DEST"
REPORT="$DEST/gpu_suite.md"
: > "$REPORT"
DEFAULT_PARTS="step_s step_b e2e_gpu loader_cpu step_s_compile propagation metrics features"
[ -n "$TINY" ] && DEFAULT_PARTS="step_s step_b e2e_gpu loader_cpu step_s_compile"
PARTS=${PARTS:-$DEFAULT_PARTS}

run() {  # run NAME CAP_SECONDS COMMAND...
  local name=$1 cap=$2
  shift 2
  echo "## $name (cap ${cap}s): $*" | tee -a "$REPORT"
  local start=$SECONDS
  timeout --signal=TERM --kill-after=15 "$cap" "$@" 2>&1 | tee -a "$REPORT"
  local rc=${PIPESTATUS[0]}
  echo "[$name: exit $rc after $((SECONDS - start)) s$([ "$rc" = 124 ] && echo ', TIME CAP REACHED')]" | tee -a "$REPORT"
  echo | tee -a "$REPORT"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  echo "cpu cores: $(nproc); $($PY -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)')"
  date -u +"%Y-%m-%d %H:%M UTC"; echo; } | tee -a "$REPORT"

for part in $PARTS; do
  case $part in
    step_s) run step_s 150 $PY benchmarks/train_step.py --arch vits16 --parity $TINY --json "$DEST/step_s.json" ;;
    step_b) run step_b 100 $PY benchmarks/train_step.py --arch vitb16 $TINY --json "$DEST/step_b.json" ;;
    e2e_gpu) run e2e_gpu 180 $PY benchmarks/train_e2e.py --augment gpu --workers 15 --part e2e $TINY \
               --json "$DEST/e2e_gpu.json" ;;
    loader_cpu) run loader_cpu 100 $PY benchmarks/train_e2e.py --augment cpu --workers 15 --part loader $TINY \
                  --json "$DEST/loader_cpu.json" ;;
    step_s_compile) run step_s_compile 180 $PY benchmarks/train_step.py --arch vits16 --compile --steps 30 $TINY \
                      --json "$DEST/step_s_compile.json" ;;
    propagation) run propagation 90 $PY benchmarks/propagation.py --device cuda ;;
    metrics) run metrics 90 $PY benchmarks/metrics.py --device cuda ;;
    features) run features 90 $PY benchmarks/features.py --device cuda --repeat 5 ;;
    *) echo "unknown part $part (known: $DEFAULT_PARTS)" | tee -a "$REPORT" ;;
  esac
done
echo "report: $REPORT"
