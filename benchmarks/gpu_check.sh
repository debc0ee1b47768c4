#!/usr/bin/env bash
# The GPU check: everything this project wants to know from one GPU session, in one log.
#
#   bash benchmarks/gpu_check.sh                       # on the GPU machine, from the repository root
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu_check.sh    # dry run on a CPU at tiny sizes
#
# Steps (each in its own time box; a failing or timed-out step is reported and the next one runs):
#   nvidia-smi -L; pip install --no-deps -e .; versions (python, torch, torchvision, torch_geometric,
#   CUDA, cuDNN, GPU); pytest -m cuda; bench_train_step.py (256 x 128, batch 66, ResNet-50, bf16 +
#   channels_last, eager; inputs already on the GPU); bench_rerank.py at Market-1501 size (3,368 x
#   15,913, d = 2048, top-120) with TF32 off and on; bench_eval.py at Market size (distances on the
#   GPU, then on the CPU against the loop baseline); bench_loader.py (16 workers, generated JPEGs);
#   bench_train_step.py again with torch.compile; bench_rerank.py once more with k-reciprocal on
#   the GPU beside it (last: the least needed). Then the key lines of every step.
#
# Environment:
#   DEVICE   cuda (default), cuda:N or cpu
#   QUICK    1: tiny sizes (ResNet-18, 32 x 16 images, 60 x 400 re-ranking, ...), for a dry run
#   PYTHON   interpreter (default: python)
#   INSTALL  1: pip install --no-deps --no-build-isolation -e . first (default 1 on a GPU, 0 on the
#            CPU, so a dry run leaves a shared environment alone); PYTHONPATH is set either way
#   TOTAL    seconds for the whole script (default 470, under 8 minutes; QUICK: 600, since a CPU
#            traces the compiled models slowly); each step's box is cut to what is left of it
#   LOG      the log file (default: $OUT/gpu_check.log when $OUT is set, else ./gpu_check.log)
# Nothing downloads: every model is built with pretrained=False.
set -u

cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd)
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
PYTHON=${PYTHON:-python}
if [[ $QUICK == 1 ]]; then TOTAL=${TOTAL:-600}; else TOTAL=${TOTAL:-470}; fi
if [[ $DEVICE == cpu ]]; then INSTALL=${INSTALL:-0}; else INSTALL=${INSTALL:-1}; fi
LOG=${LOG:-${OUT:-.}/gpu_check.log}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
STEPS=$(mktemp -d)
trap 'rm -rf "$STEPS"' EXIT

mkdir -p "$(dirname "$LOG")"
exec > >(tee "$LOG") 2>&1

START=$(date +%s)
SUMMARY=()
RAN=()  # names of the steps that ran, in order

# step NAME SECONDS CMD...: run CMD in a time box of SECONDS (cut to what is left of TOTAL).
step() {
    local name=$1 box=$2
    shift 2
    local left=$((TOTAL - ($(date +%s) - START)))
    if ((left < 5)); then
        echo; echo "=== $name: SKIPPED (the script's $TOTAL s are used up) ==="
        SUMMARY+=("$name: skipped (no time left)")
        return
    fi
    ((box > left)) && box=$left
    echo
    echo "=== $name (time box ${box} s) ==="
    echo "\$ $*"
    local t0 t1 rc
    RAN+=("$name")
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$box" "$@" 2>&1 | tee "$STEPS/$name.out"
    rc=${PIPESTATUS[0]}
    t1=$(date +%s.%N)
    local took
    took=$(awk "BEGIN{printf \"%.1f\", $t1 - $t0}")
    local what="rc=$rc"
    ((rc == 124 || rc == 137)) && what="TIMED OUT after ${box} s"
    echo "=== $name: $what (${took} s) ==="
    SUMMARY+=("$name: $what (${took} s)")
}

echo "gpu_check.sh: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), DEVICE=$DEVICE QUICK=$QUICK INSTALL=$INSTALL TOTAL=${TOTAL}s"
echo "repository: $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no git metadata'))"
echo "host: $(hostname), $(nproc) cores, $(free -g 2>/dev/null | awk '/Mem:/{print $2 " GiB"}')"

if command -v nvidia-smi >/dev/null 2>&1; then
    step nvidia-smi 15 nvidia-smi -L
else
    echo; echo "=== nvidia-smi: not found on this machine (no NVIDIA driver tools) ==="
    SUMMARY+=("nvidia-smi: not found")
fi

if [[ $INSTALL == 1 ]]; then
    step install 40 "$PYTHON" -m pip install --no-deps --no-build-isolation -e "$REPO"
fi

step versions 30 "$PYTHON" - <<'EOF'
import platform, sys
import torch
print(f"python {platform.python_version()} ({sys.executable})")
print(f"torch {torch.__version__}, CUDA (build) {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
for name in ("torchvision", "torch_geometric", "torch_scatter", "torch_cluster", "pyg_lib", "triton",
             "numpy", "pandas", "yaml", "PIL", "tqdm", "matplotlib", "scipy", "onnx", "onnxruntime"):
    try:
        mod = __import__(name)
        print(f"{name} {getattr(mod, '__version__', '?')}")
    except Exception as exc:  # optional packages
        print(f"{name}: not importable ({type(exc).__name__})")
import shutil, subprocess
cc = shutil.which("gcc") or shutil.which("cc")  # Triton builds its launchers with a C compiler
print(f"C compiler: {subprocess.run([cc, '--version'], capture_output=True, text=True).stdout.splitlines()[0] if cc else 'none found'}")
import hrnet_pyg
print(f"hrnet_pyg {hrnet_pyg.__version__} from {hrnet_pyg.__file__}")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}, "
              f"bf16 {torch.cuda.is_bf16_supported()}")
    print(f"TF32 defaults: matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32}")
else:
    print("CUDA: not available to torch")
EOF

step pytest-cuda 100 "$PYTHON" -m pytest -m cuda -v -p no:cacheprovider --durations=10 --continue-on-collection-errors

if [[ $QUICK == 1 ]]; then
    TRAIN=(--backbone resnet18 --image-size 32 16 --batch 4 4 --repeats 1 --memory-steps 1)
    COMPILE=(--compile --compile-backend eager)
    RERANK=(--queries 60 --gallery 400 --d 256 --repeats 1 --mm-size 1024)
    EVAL=(--quick --queries 200 --gallery 1000 --repeats 1)
    LOADER=(--workers 2 --ids 30 --imgs-per-id 8 --size 128 64 --batch 4 4 --batches 8)
    TRAIN_BOX=150  # a busy 2-core CPU takes a minute or two for what a GPU does in seconds
    COMPILE_BOX=240
else
    TRAIN=(--backbone resnet50 --image-size 256 128 --batch 11 6 --repeats 20 --memory-steps 2)
    COMPILE=(--compile)
    RERANK=(--repeats 3)
    EVAL=(--repeats 1)
    LOADER=(--workers 16 --batches 60)
    TRAIN_BOX=60
    COMPILE_BOX=110
fi

step train-step "$TRAIN_BOX" "$PYTHON" benchmarks/bench_train_step.py --device "$DEVICE" --amp bf16 --channels-last "${TRAIN[@]}"
step rerank 50 "$PYTHON" benchmarks/bench_rerank.py --device "$DEVICE" --tf32 both --skip-kreciprocal "${RERANK[@]}"
if [[ $DEVICE != cpu ]]; then
    step eval-on-gpu 20 "$PYTHON" benchmarks/bench_eval.py --device "$DEVICE" --skip-loops "${EVAL[@]}"
fi
step eval-on-cpu 30 "$PYTHON" benchmarks/bench_eval.py --device cpu "${EVAL[@]}"
step loader 40 "$PYTHON" benchmarks/bench_loader.py --device "$DEVICE" "${LOADER[@]}"
step train-step-compiled "$COMPILE_BOX" "$PYTHON" benchmarks/bench_train_step.py --device "$DEVICE" --amp bf16 --channels-last "${TRAIN[@]}" "${COMPILE[@]}"
step rerank-vs-kreciprocal 45 "$PYTHON" benchmarks/bench_rerank.py --device "$DEVICE" "${RERANK[@]}" --repeats 1

echo
echo "=== summary ($(($(date +%s) - START)) s in all) ==="
printf '  %s\n' "${SUMMARY[@]}"
echo
echo "=== key lines ==="
for name in "${RAN[@]}"; do
    f="$STEPS/$name.out"
    [[ -e $f ]] || continue
    grep -E "^(RATIO |one optimisation step|relational re-ranking|k-reciprocal:|TF32 on:|check on|torch\.mm|loader:|problem:|time evaluate_rank|evaluate_rank:|at [0-9]+ images/s|graph modules|[0-9]+ generated)|^ *(CNN|HRNet): |passed|failed|skipped|FAILED|ERROR|Error|cuda:[0-9] |^torch |^torchvision |^torch_geometric |^python |^C compiler|^GPU " "$f" \
        | sed "s/^/[$name] /"
done
echo "log: $LOG"
