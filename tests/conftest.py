import os
import shutil
import tempfile

# The parity tests compare float32 results at 1e-5: keep XLA from using lower-precision matmuls.
os.environ.setdefault('JAX_DEFAULT_MATMUL_PRECISION', 'highest')
# One persistent XLA cache for the session, inherited by pytest-xdist's workers and the tests' subprocesses:
# many modules and processes compile the same tiny models' programs. Its size bound turns on JAX's file
# lock, which concurrent processes need (stitchjax.workdir.compilation_cache). The process that made it
# (xdist's controller, or pytest alone) removes it.
_OWN_CACHE = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _OWN_CACHE = os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='stitchjax-tests-xla-')
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


# The longest modules first (--durations on 2 cores, 2026-12-05), so that pytest-xdist's two workers, which take
# a module at a time in this order, finish together instead of one starting a long module as the other ends.
LONGEST_FIRST = ('test_demo.py', 'test_distributed.py', 'test_vit.py', 'test_convert_timm.py', 'test_model.py',
                 'test_faults.py', 'test_tree.py', 'test_pretrain.py', 'test_segmentation.py', 'test_stitch_layers.py',
                 'test_protocol.py', 'test_train.py', 'test_metrics.py', 'test_scouting.py')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a module keeps its own order


def pytest_sessionfinish(session, exitstatus):
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
