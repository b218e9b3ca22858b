"""train.fit compiles each program once: across epochs, learning rates, a resume and the data-parallel mesh;
and the head-chunked CPU attention under that mesh gives the losses of one device."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from stitchjax import config_lib, data, train, workdir

ROOT = pathlib.Path(__file__).resolve().parents[1]

SWEEP = r'''
import collections, functools, json, sys, tempfile, jax
from jax import monitoring
from jax._src import dispatch
import helpers as H
from stitchjax import objectives, train, vit
vit.CPU_SCORE_BYTES = 1  # attention one head at a time, as larger models run it on CPUs, under the mesh too
compiled = collections.Counter()
def count(event, seconds, fun_name='', **kw):
  if event == dispatch.BACKEND_COMPILE_EVENT:
    compiled[fun_name] += 1
monitoring.register_event_duration_secs_listener(count)
model, frozen, init, arrays = H.tiny_problem('ffm_loss')
loss = functools.partial(objectives.ffm_loss, model)
placement = train.Placement.data_parallel()
score = objectives.loss_score(loss, 16, placement.batch)
losses, ckpt = [], tempfile.mkdtemp()
for lr in (1e-2, 3e-3):
  sched = train.Schedule(lr=lr, epochs=3, patience=3, batch_size=16)
  _, h = train.fit(loss, score, init, frozen, arrays, arrays, sched, placement=placement,
                   ckpt_dir=f'{ckpt}/{lr}')
  losses += h['train_loss']
# A resumed fit (state restored from the checkpoint as numpy) runs the same programs.
sched = train.Schedule(lr=3e-3, epochs=5, patience=5, batch_size=16)
_, h = train.fit(loss, score, init, frozen, arrays, arrays, sched, placement=placement, ckpt_dir=f'{ckpt}/{3e-3}')
print(json.dumps({'devices': jax.device_count(), 'losses': losses + h['train_loss'], 'compiled': compiled}))
'''


def test_a_sweep_compiles_each_program_once_and_eight_devices_match_one():
  """Eight devices shard the batch of a fit whose target runs head-chunked attention: the same losses as one."""
  out = {}
  for n in (1, 8):
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={n}', JAX_PLATFORMS='cpu',
               PYTHONPATH=str(ROOT / 'tests'))
    result = subprocess.run([sys.executable, '-c', SWEEP], cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out[n] = json.loads(result.stdout.strip().splitlines()[-1])
    assert out[n]['devices'] == n
    # Two rates x 3 epochs, then a resumed fit of 2 more epochs: one training step, one validation loss.
    assert out[n]['compiled']['jit(step)'] == 1, out[n]['compiled']
    assert out[n]['compiled']['jit(ffm_loss)'] == 1, out[n]['compiled']
    assert len(out[n]['losses']) == 8
  np.testing.assert_allclose(out[8]['losses'], out[1]['losses'], rtol=1e-5)


def test_the_persistent_compilation_cache_is_written_and_the_settings_restored(tmp_path):
  config = config_lib.stitching(str(tmp_path / 'work'), {'kind': 'image_folder', 'root': 'unused'})
  config.compilation_cache_dir = str(tmp_path / 'xla')
  before = jax.config.jax_compilation_cache_dir
  with workdir.compilation_cache(config):
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'xla')
    jax.jit(lambda x: x * 3 + 1)(np.arange(7.0)).block_until_ready()
  assert jax.config.jax_compilation_cache_dir == before
  assert any((tmp_path / 'xla').glob('*-cache')), list((tmp_path / 'xla').iterdir())
  config.compilation_cache_dir = 'none'
  with workdir.compilation_cache(config):
    assert jax.config.jax_compilation_cache_dir == before


def test_a_run_uses_the_workdir_cache_unless_jax_has_one(tmp_path):
  config = config_lib.stitching(str(tmp_path / 'work'), {'kind': 'image_folder', 'root': 'unused'})
  before = jax.config.jax_compilation_cache_dir
  try:
    jax.config.update('jax_compilation_cache_dir', str(tmp_path / 'users'))
    with workdir.compilation_cache(config):
      assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'users')
    jax.config.update('jax_compilation_cache_dir', None)
    with workdir.compilation_cache(config):
      assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'work' / 'cache' / 'xla')
  finally:
    jax.config.update('jax_compilation_cache_dir', before)


@pytest.mark.parametrize('field', ['lr', 'epochs', 'patience', 'batch_size'])
def test_a_schedule_rejects_non_positive_fields(field):
  fields = {'lr': 1e-3, 'epochs': 2, 'patience': 2, 'batch_size': 4} | {field: 0}
  with pytest.raises(ValueError, match=f'train.{field}=0 must be positive'):
    train.Schedule(**fields)


def test_array_batches_are_the_one_batchers_padded_and_masked():
  """train.batches reads its batches from data.batch_indices (tests/test_data.py tests it)."""
  idx = list(data.batch_indices(10, 4, seed=1, epoch=2))
  batches = list(train.batches({'x': np.arange(10)}, 4, seed=1, epoch=2))
  assert [list(b['x'][b['mask'] > 0]) for b in batches] == [sorted(i) for i in idx]
  assert all(len(b['x']) == 4 for b in batches) and batches[-1]['mask'].tolist() == [1, 1, 0, 0]
