import os
import sys

# Tests import the tiny-model factory (tests/hf_models.py) as a top-level module.
sys.path.insert(0, os.path.dirname(__file__))
# The parity tests compare float32 results at 1e-5: keep XLA from using lower-precision matmuls.
os.environ.setdefault('JAX_DEFAULT_MATMUL_PRECISION', 'highest')
