#!/usr/bin/env bash
# The GPU speed targets in one command, on an offline machine, within a time budget.
#
#   bash benchmarks/wheels.sh                     # where pip reaches an index: the wheels the image lacks, in .whl/
#   bash benchmarks/gpu_suite.sh [OUT_DIR]        # on the GPU machine, from a checkout holding .whl/
#   bash benchmarks/gpu_suite.sh --rehearse DIR   # on a CPU: the same install and every step, at toy sizes
#
# 1. Install, offline: the carried wheels (.whl/, or $WHEELS) into a private folder with --no-index
#    --no-deps, then stitchjax itself with --no-deps, so that the image's own jax, CUDA, torch and
#    transformers stay as they are. Nothing is fetched.
# 2. Prove it: jax sees the GPU, and stitchjax matches transformers on it (benchmarks/parity.py, float32
#    and bfloat16). The suite stops here if either fails.
# 3. Measure, most important first, each step under what is left of $SUITE_SECONDS (default 540 s): the
#    forward against transformers and MFU (ViT-L, bf16, batch 64), stitch training with and without the
#    feature cache at layers 2, 14 and 22 with peak memory (ViT-L pair, batch 128, bf16), compilations
#    of a 3-rate sweep, and the float32 forward. A step that runs out of time is cut and named.
# Tables go to OUT_DIR ($OUT if set, else benchmarks/results/gpu-<date>) as markdown, all.md holds them all.
set -euo pipefail
cd "$(dirname "$0")/.."
REHEARSE=0
if [[ "${1:-}" == "--rehearse" ]]; then REHEARSE=1; shift; fi
OUT_DIR="${1:-${OUT:-benchmarks/results/gpu-$(date +%F)}}"
SUITE_SECONDS="${SUITE_SECONDS:-540}"
WHEELS="${WHEELS:-.whl}"
START=$SECONDS
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

# 1. Install.
SITE=$(mktemp -d)/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" "$WHEELS"/*.whl . \
  > "$OUT_DIR/install.log" 2>&1 || { echo "install failed: see $OUT_DIR/install.log"; exit 1; }
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
cd benchmarks  # the scripts import each other; stitchjax now comes from $SITE
python3 -c 'import stitchjax, grain, ml_collections, sys; print("stitchjax from", stitchjax.__file__)'

# 2. Prove it.
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # jax and torch share the GPU; peak memory counts what steps use
if [[ $REHEARSE == 1 ]]; then
  export JAX_PLATFORMS=cpu
  L=S; SIZE=(--image-size 56); BATCH=4; TRAIN_BATCH=4; ROUNDS=1; CACHE=8
else
  python3 -c 'import jax, sys; sys.exit(0 if jax.default_backend() == "gpu" else "gpu_suite.sh: jax sees no GPU (" + jax.default_backend() + ")")'
  L=L; SIZE=(); BATCH=64; TRAIN_BATCH=128; ROUNDS=10; CACHE=512
fi
python3 parity.py --size "$L" "${SIZE[@]}" | tee "$OUT_DIR/parity.md"

# 3. Measure.
step() {  # step NAME COMMAND...: stdout to OUT_DIR/NAME.md, logs to OUT_DIR/NAME.log, cut at the time left
  local name=$1; shift
  local left=$((SUITE_SECONDS - (SECONDS - START)))
  if ((left < 20)); then echo "$name: SKIPPED, the suite's $SUITE_SECONDS s are spent" | tee "$OUT_DIR/$name.md"; return; fi
  echo "== $name ($left s left): $*"
  if timeout "$left" "$@" > "$OUT_DIR/$name.md" 2> "$OUT_DIR/$name.log"; then cat "$OUT_DIR/$name.md"
  else echo "$name FAILED or cut at $left s: see $OUT_DIR/$name.log" | tee -a "$OUT_DIR/$name.md"; fi
}
step forward_bf16 python3 forward.py --family all --size "$L" "${SIZE[@]}" --batch "$BATCH" --dtype bfloat16 --rounds "$ROUNDS"
step stitch_ffm_bf16 python3 stitch_train.py --size "$L" "${SIZE[@]}" --batch "$TRAIN_BATCH" --dtype bfloat16 --remat --steps 5 \
  --cache-images "$CACHE"
step compiles python3 compiles.py
step forward_f32 python3 forward.py --family all --size "$L" "${SIZE[@]}" --batch "$BATCH" --dtype float32 --rounds 3
cat "$OUT_DIR"/parity.md "$OUT_DIR"/forward_bf16.md "$OUT_DIR"/stitch_ffm_bf16.md "$OUT_DIR"/compiles.md \
  "$OUT_DIR"/forward_f32.md > "$OUT_DIR/all.md" 2>/dev/null || true
echo "tables in $OUT_DIR (all.md), $((SECONDS - START)) s"
