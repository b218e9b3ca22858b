#!/usr/bin/env bash
# Issue 7's GPU suite in one command: forward (every family at ViT-L, MFU), stitch training
# (FFM/TLT at layers 2, 14, 22, cache against recompute), and peak memory at batch 128 in bf16.
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR]        # default OUT_DIR: benchmarks/results/gpu-<date>
#
# Needs a jax with CUDA (pip install -U "jax[cuda12]") and a CUDA torch in the active environment;
# it stops at once if jax sees no GPU. Each table is written to OUT_DIR as markdown, ready to paste
# into BENCHMARKS.md; all.md holds them all. About 20-30 minutes on one H100.
set -euo pipefail
cd "$(dirname "$0")"
export PYTHONPATH="$PWD/..${PYTHONPATH:+:$PYTHONPATH}"
OUT="${1:-results/gpu-$(date +%F)}"
mkdir -p "$OUT"
python -c 'import jax, sys; sys.exit(0 if jax.default_backend() == "gpu" else "gpu_suite.sh: jax sees no GPU (" + jax.default_backend() + ")")'
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # peak_bytes_in_use then counts what the steps use, not a preallocated pool

run() {  # run NAME COMMAND...: the command's stdout to OUT/NAME.md, progress bars and logs to OUT/NAME.log
  local name=$1; shift
  echo "== $name: $*"
  if "$@" > "$OUT/$name.md" 2> "$OUT/$name.log"; then cat "$OUT/$name.md"; else echo "$name FAILED: see $OUT/$name.log"; fi
}

# 1. Forward, ViT-L at the paper's resolutions (336 / 384 px), bf16, batch 64, plus float32 for reference.
run forward_L_bf16 python forward.py --family all --size L --batch 64 --dtype bfloat16 --rounds 10
run forward_L_f32 python forward.py --family all --size L --batch 64 --dtype float32 --rounds 5

# 2. Stitch training at ViT-L, batch 128, bf16: step and epoch times, cache against recompute, cache build.
run stitch_L_bf16 python stitch_train.py --size L --batch 128 --dtype bfloat16 --steps 10 --cache-images 512
run stitch_L_bf16_remat python stitch_train.py --size L --batch 128 --dtype bfloat16 --steps 10 --remat \
  --cache-images 128

# 3. Peak device memory at batch 128, bf16, one process per method and layer (the peak is per process).
for method in ffm tlt; do
  for layer in 2 22; do
    run "memory_${method}_${layer}" python stitch_train.py --size L --batch 128 --dtype bfloat16 --steps 2 \
      --methods "$method" --layers "$layer" --cache-images 128
  done
done

# 4. Smaller sizes on the GPU, for the CPU tables' counterparts.
run forward_B_bf16 python forward.py --family all --size B --batch 64 --dtype bfloat16 --rounds 10

cat "$OUT"/*.md > "$OUT/all.md"
echo "tables in $OUT (all.md)"
