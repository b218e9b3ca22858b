import os
import shutil
import sys
import tempfile

# Tests import the tiny-model factory (tests/hf_models.py) as a top-level module.
sys.path.insert(0, os.path.dirname(__file__))
# The parity tests compare float32 results at 1e-5: keep XLA from using lower-precision matmuls.
os.environ.setdefault('JAX_DEFAULT_MATMUL_PRECISION', 'highest')
# One persistent XLA cache for the session, inherited by the tests' subprocesses: many modules and processes
# compile the same tiny models' programs. Its size bound turns on JAX's file lock, which concurrent
# processes need (stitchjax.protocol.compilation_cache).
_XLA_CACHE = tempfile.mkdtemp(prefix='stitchjax-tests-xla-')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _XLA_CACHE)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(4 << 30))


import jax  # noqa: E402  (after the environment above is set)
import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope='module')
def _fresh_compilation_caches():
  """One pytest process compiles for every test module; a real run compiles for one config. Dropping
  the compiled executables between modules keeps the process's memory maps (vm.max_map_count) in
  bounds: the whole suite once crashed inside XLA's compiler without it."""
  yield
  jax.clear_caches()


def pytest_sessionfinish(session, exitstatus):
  shutil.rmtree(_XLA_CACHE, ignore_errors=True)
