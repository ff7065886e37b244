#!/usr/bin/env bash
# The GPU checks in one short run (issue 17 item 7): the CUDA tests and the anchor benchmark's
# --cuda rows, with their figures printed, so a session that is lent a GPU machine uses it in
# minutes. Two steps:
#
#   bash tools/gpu_check.sh --prepare     # here: the anchor and the wheels the GPU image lacks
#                                         # go to build/gpu/ (git-ignored, about 3 MB)
#   bash tools/gpu_check.sh               # there: through the device tool, e.g.
#       run(command="bash tools/gpu_check.sh", carry=["build/gpu"], timeout_s=540)
#
# On the GPU machine it uses the image's own python and packages (its torch, onnx and
# onnxruntime; nothing can be downloaded there), adds the carried wheels and runs the
# project from this folder, and needs an onnxruntime with CUDAExecutionProvider
# (onnxruntime-gpu): without one it says so and exits 3 before any long step. Figures and
# logs go to $OUT (the device tool brings them back) or to build/gpu/out.
# The device image's onnxruntime has been the CPU build so far, and an onnxruntime-gpu wheel
# (about 200 MB) is more than the device tool carries (64 MiB): on such an image the script
# stops at that check with status 3 and says so.
set -uo pipefail
cd "$(dirname "$0")/.."
GPU_DIR="${GPU_CHECK_DIR:-build/gpu}"
OUT_DIR="${OUT:-$GPU_DIR/out}"
BENCH_SECONDS="${GPU_CHECK_BENCH_SECONDS:-360}"

if [ "${1:-}" = "--prepare" ]; then
    set -e
    mkdir -p "$GPU_DIR/anchors" "$GPU_DIR/wheels"
    cp ../shared/anchors/resnet_small.onnx ../shared/anchors/digits32_*.npz "$GPU_DIR/anchors/"
    # the GPU image has onnx, onnxruntime, numpy, scipy, sympy, onnx-ir, threadpoolctl; not these
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$GPU_DIR/wheels" onnx-graphsurgeon
    du -sh "$GPU_DIR"
    echo "gpu_check: prepared $GPU_DIR; now run: bash tools/gpu_check.sh (carry $GPU_DIR)"
    exit 0
fi

mkdir -p "$OUT_DIR"
log() { echo "gpu_check: $*" | tee -a "$OUT_DIR/summary.txt"; }
[ -d "$GPU_DIR/anchors" ] || { log "no $GPU_DIR/anchors: run 'bash tools/gpu_check.sh --prepare' here first and carry $GPU_DIR"; exit 2; }
PY="${GPU_CHECK_PYTHON:-python3}"  # the image's python (it holds onnx, onnxruntime, scipy, ...)
python() { "$PY" "$@"; }
if ! python -c "import onnx_graphsurgeon" 2>/dev/null; then  # a bare machine, given back after: install into it
    python -m pip install --quiet --no-index --no-deps --find-links "$GPU_DIR/wheels" onnx-graphsurgeon \
        || { log "cannot install the carried wheels (see pip's output above)"; exit 2; }
fi
# the project runs from this folder (PYTHONPATH): an editable install needs build tools the image may lack
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import onnx_compress" || { log "onnx_compress does not import here (see above)"; exit 2; }
nvidia-smi -L 2>&1 | tee -a "$OUT_DIR/summary.txt"
python - <<'PY' 2>&1 | tee -a "$OUT_DIR/summary.txt"
import onnxruntime as ort, onnx, numpy
print("onnxruntime", ort.__version__, ort.get_device(), ort.get_available_providers(), "onnx", onnx.__version__,
      "numpy", numpy.__version__)
PY
if ! python -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
    log "this onnxruntime has no CUDAExecutionProvider: carry an onnxruntime-gpu wheel for this image's CUDA and Python into $GPU_DIR/wheels and install it (pip install --no-index --find-links $GPU_DIR/wheels onnxruntime-gpu); nothing else was run"
    exit 3
fi
status=0
log "CUDA tests"
python -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT_DIR/cuda_tests.txt" | tail -15
[ "${PIPESTATUS[0]}" = 0 ] || { status=1; log "CUDA tests FAILED (cuda_tests.txt)"; }
log "anchor benchmark, --cuda goal rows (at most $BENCH_SECONDS s)"
ONNX_COMPRESS_ANCHORS="$GPU_DIR/anchors" timeout "$BENCH_SECONDS" python tools/bench_anchor.py --cuda --no-write \
    > "$OUT_DIR/bench_anchor_cuda.md" 2> "$OUT_DIR/bench_anchor_cuda.log"
rc=$?
cat "$OUT_DIR/bench_anchor_cuda.md"
tail -8 "$OUT_DIR/bench_anchor_cuda.log"
[ "$rc" = 0 ] || { status=1; log "anchor benchmark stopped with status $rc (124: the time limit; rows done are in the log)"; }
log "done, status $status; figures in $OUT_DIR"
exit "$status"
