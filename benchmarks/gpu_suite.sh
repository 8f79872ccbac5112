#!/usr/bin/env bash
# The GPU checks and measurements of the project in one run: correctness on CUDA first, then
# propagation (engine, band sweep, the whole pipeline on a DAVIS-val-sized clip), then training
# (step, bf16 parity, end to end), then the rest. Each part runs under its own time cap, and the
# whole suite under SUITE_BUDGET seconds: a part starts only with its cap cut to what is left.
# Everything printed also goes to $OUT/gpu_suite.md when $OUT is set (else benchmarks/results/).
#
#   bash benchmarks/gpu_suite.sh              # on a GPU machine (SUITE_BUDGET=480 s by default)
#   bash benchmarks/gpu_suite.sh --tiny       # CPU smoke run of the training parts (tiny config)
#   PARTS="engine pipeline" bash benchmarks/gpu_suite.sh   # a subset
#
# The GPU machine needs no install: the repository root goes on PYTHONPATH. Tests that read the
# shared golden files find them through TCORE_SHARED (default: .gpu_shared/ in the repository, a
# git-ignored copy of the shared test data's golden/ (the folder tests/helpers.py finds) made with `bash benchmarks/gpu_suite.sh --stage-shared`).
#
# Parts (caps in seconds):
#   cuda_tests  the CUDA tests: golden engine and ViT outputs on the card, fp32 under TF32, CPU = GPU (90)
#   engine      engine vs reference-style and official-style engines, band-size sweep, memory       (75)
#   pipeline    `tcore propagate` on 1,999 DAVIS-sized JPEG frames, stage by stage                  (150)
#   step_s      train_step ViT-S/16, 64/GPU, bf16, + bf16-vs-fp32 loss parity                       (100)
#   step_b      train_step ViT-B/16, 32/GPU, bf16                                                   (70)
#   e2e_gpu     train_e2e ViT-S/16, batched GPU augmentation, 15 workers                            (100)
#   backbone    backbone throughput, tcore vs timm                                                  (50)
#   loader_gpu  train_e2e data pipeline alone, batched GPU augmentation, 15 workers                 (60)
#   loader_cpu  train_e2e data pipeline alone, PIL augmentation in 15 workers                       (60)
#   metrics     DAVIS J&F metrics on CUDA                                                           (40)
#   step_s_compile  train_step ViT-S/16 with torch.compile                                           (180)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${1:-}" = "--stage-shared" ]; then  # copy what the CUDA tests read into the repository (git-ignored)
  src=$(cd tests && $PY -c 'from helpers import shared_root; print(shared_root())')  # the tests' own lookup
  mkdir -p .gpu_shared && cp -r "$src/golden" .gpu_shared/ && echo "staged $src/golden in .gpu_shared/"
  exit 0
fi
TINY=""
[ "${1:-}" = "--tiny" ] && TINY="--tiny"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
[ -z "${TCORE_SHARED:-}" ] && [ -d .gpu_shared ] && export TCORE_SHARED="$PWD/.gpu_shared"
DEST=${OUT:-benchmarks/results}
mkdir -p "$DEST"
REPORT="$DEST/gpu_suite.md"
: > "$REPORT"
BUDGET=${SUITE_BUDGET:-480}
DEFAULT_PARTS="cuda_tests engine pipeline step_s step_b e2e_gpu loader_gpu backbone loader_cpu metrics step_s_compile"
[ -n "$TINY" ] && DEFAULT_PARTS="step_s step_b e2e_gpu loader_cpu step_s_compile"
PARTS=${PARTS:-$DEFAULT_PARTS}

run() {  # run NAME CAP_SECONDS COMMAND...
  local name=$1 cap=$2
  shift 2
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt 20 ]; then
    echo "## $name: SKIPPED (suite budget of ${BUDGET} s spent)" | tee -a "$REPORT"
    return
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  echo "## $name (cap ${cap}s, at ${SECONDS}s): $*" | tee -a "$REPORT"
  local start=$SECONDS
  timeout --signal=TERM --kill-after=10 "$cap" "$@" 2>&1 | tee -a "$REPORT"
  local rc=${PIPESTATUS[0]}
  echo "[$name: exit $rc after $((SECONDS - start)) s$([ "$rc" = 124 ] && echo ', TIME CAP REACHED')]" | tee -a "$REPORT"
  echo | tee -a "$REPORT"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader 2>/dev/null \
    || echo "no nvidia-smi"
  echo "cpu cores: $(nproc); $($PY -c 'import torch, torchvision, timm; print("torch", torch.__version__,
    "torchvision", torchvision.__version__, "timm", timm.__version__)')"
  echo "shared data for tests: ${TCORE_SHARED:-none}; suite budget ${BUDGET} s"
  date -u +"%Y-%m-%d %H:%M UTC"; echo; } | tee -a "$REPORT"

for part in $PARTS; do
  case $part in
    cuda_tests) run cuda_tests 90 $PY -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py \
                  tests/test_propagation_engine.py -k cuda ;;
    engine) run engine 75 $PY benchmarks/propagation.py --part engine --device cuda --repeat 3 --official-style \
              --bands 256 512 1024 2048 --memory-frames 60 240 ;;
    pipeline) run pipeline 150 $PY benchmarks/propagation.py --part pipeline --device cuda --pipeline-frames 1999 --pipeline-unique 50 ;;
    step_s) run step_s 100 $PY benchmarks/train_step.py --arch vits16 --parity $TINY --json "$DEST/step_s.json" ;;
    step_b) run step_b 70 $PY benchmarks/train_step.py --arch vitb16 $TINY --json "$DEST/step_b.json" ;;
    e2e_gpu) run e2e_gpu 100 $PY benchmarks/train_e2e.py --augment gpu --workers 15 --part e2e $TINY \
               --json "$DEST/e2e_gpu.json" ;;
    backbone) run backbone 50 $PY benchmarks/backbone.py --device cuda --repeat 5 ;;
    loader_gpu) run loader_gpu 60 $PY benchmarks/train_e2e.py --augment gpu --workers 15 --part loader $TINY \
                  --json "$DEST/loader_gpu.json" ;;
    loader_cpu) run loader_cpu 60 $PY benchmarks/train_e2e.py --augment cpu --workers 15 --part loader $TINY \
                  --json "$DEST/loader_cpu.json" ;;
    metrics) run metrics 40 $PY benchmarks/metrics.py --frames 400 --device cuda ;;
    step_s_compile) run step_s_compile 180 $PY benchmarks/train_step.py --arch vits16 --compile --steps 30 $TINY \
                      --json "$DEST/step_s_compile.json" ;;
    *) echo "unknown part $part (known: $DEFAULT_PARTS)" | tee -a "$REPORT" ;;
  esac
done
echo "report: $REPORT (suite took ${SECONDS} s)"
