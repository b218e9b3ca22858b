"""Every config in configs/ loads and passes its checks without data or weights; the shared schedule."""
import importlib.util
import pathlib

import pytest

from stitchjax import cells, config_lib, jobs

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / 'configs').glob('*.py'))


def _load(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.name)
def test_every_config_names_a_job_and_a_stitching_config_validates(path):
  config = _load(path)
  assert config.job in jobs.JOBS
  if config.job in ('stitch', 'plan'):
    cells.validate(config)
    assert set(config_lib.stitching('w', {}).keys()) <= set(config.keys())  # nothing of the shared structure lost


def test_the_two_core_schedule_is_what_the_mini_configs_run():
  c = config_lib.on_two_cpu_cores(config_lib.stitching('w', {'kind': 'fashion_mnist'}, config_lib.MINI_VFMS))
  assert (c.dtype, c.remat, c.train.epochs, c.train.patience, c.train.lrs) == ('float32', True, 5, 2, '0.01')
  for path in (p for p in CONFIGS if p.stem in ('demo', 'seg_mini')):
    config = _load(path)
    assert (config.train.epochs, config.train.patience, config.train.lrs, config.dtype, config.remat) == (
        5, 2, '0.01', 'float32', True)
