import os
import sys

# Tests import the tiny-model factory (tests/hf_models.py) as a top-level module.
sys.path.insert(0, os.path.dirname(__file__))
# The parity tests compare float32 results at 1e-5: keep XLA from using lower-precision matmuls.
os.environ.setdefault('JAX_DEFAULT_MATMUL_PRECISION', 'highest')


import jax  # noqa: E402  (after the environment above is set)
import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope='module')
def _fresh_compilation_caches():
  """One pytest process compiles for every test module; a real run compiles for one config. Dropping
  the compiled executables between modules keeps the process's memory maps (vm.max_map_count) in
  bounds: the whole suite once crashed inside XLA's compiler without it."""
  yield
  jax.clear_caches()
