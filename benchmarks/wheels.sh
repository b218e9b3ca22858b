#!/usr/bin/env bash
# The wheels an offline GPU image lacks, for benchmarks/gpu_suite.sh: run this where pip reaches a package
# index, then carry the folder to the GPU machine beside the repository.
#
#   bash benchmarks/wheels.sh [DIR] [PYTHON_VERSION]     # default: .whl and 3.12 (the GPU image's Python)
#
# The versions are constraints.txt's, the set CI tests. The list is what the library needs at run time
# (pyproject.toml) and the image this project benchmarks on does not hold: ml_collections, grain and grain's
# own needs array_record and portpicker (the image has jax, flax, optax, orbax, numpy, scipy, pillow,
# safetensors, absl, tqdm, matplotlib, torch and transformers). grain and array_record are compiled, hence
# the platform tags; the rest are pure Python.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-.whl}"
PY="${2:-3.12}"
PACKAGES=(ml_collections grain array_record portpicker)
mkdir -p "$DIR"
for name in "${PACKAGES[@]}"; do
  pin=$(grep -i "^${name//_/[-_]}==" constraints.txt) || { echo "wheels.sh: $name is not in constraints.txt" >&2; exit 1; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$DIR" "$pin"
done
ls -1 "$DIR"
