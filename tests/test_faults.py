"""Faults: locks, corrupt checkpoints, killed runs, bad images and configs, non-finite losses, a full disk
(the feature cache's own faults are in test_features.py)."""
import errno
import functools
import os
import pathlib
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

import helpers as H
from stitchjax import objectives, train

ROOT = pathlib.Path(__file__).resolve().parents[1]

def _fit(ckpt, epochs, lr=1e-2, checkpoint_every_s=0.0):
  model, frozen, init, arrays = H.tiny_problem('ffm_loss')
  schedule = train.Schedule(lr=lr, epochs=epochs, patience=epochs, batch_size=32,
                            checkpoint_every_s=checkpoint_every_s)
  loss = functools.partial(objectives.ffm_loss, model)
  return train.fit(loss, objectives.loss_score(loss, 32), init, frozen, arrays, arrays,
                   schedule, ckpt_dir=ckpt)


def test_a_checkpoint_interval_saves_when_due_and_when_training_stops(tmp_path):
  every, _ = _fit(tmp_path / 'every', 3)
  assert sorted(int(p.name) for p in (tmp_path / 'every').iterdir() if p.name.isdigit()) == [2, 3]  # max_to_keep=2
  sparse, _ = _fit(tmp_path / 'sparse', 3, checkpoint_every_s=3600)
  assert [p.name for p in (tmp_path / 'sparse').iterdir() if p.name.isdigit()] == ['3']
  jax.tree.map(np.testing.assert_array_equal, sparse, every)


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_step(tmp_path):
  whole, _ = _fit(tmp_path / 'whole', 4)
  _fit(tmp_path / 'ckpt', 3)
  latest = tmp_path / 'ckpt' / '3'
  for f in latest.rglob('*'):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(b'\0' * 7)  # damage every file of the step
  with pytest.warns(UserWarning, match=r'checkpoint step 3 in .*ckpt is corrupt \(.* is not as saved'):
    resumed, history = _fit(tmp_path / 'ckpt', 4)
  assert history['epochs'] == 4
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), resumed, whole)


def _flaky_restore(monkeypatch, failures: int):
  """orbax's restore fails `failures` times with a read error (a storage hiccup), then works."""
  import orbax.checkpoint as ocp
  restore, calls = ocp.CheckpointManager.restore, []

  def flaky(self, *a, **k):
    calls.append(1)
    if len(calls) <= failures:
      raise OSError(errno.EIO, 'Input/output error')
    return restore(self, *a, **k)
  monkeypatch.setattr(ocp.CheckpointManager, 'restore', flaky)
  monkeypatch.setattr(train.time, 'sleep', lambda s: None)
  return calls


def test_a_transient_read_error_is_retried_and_the_step_kept(tmp_path, monkeypatch):
  whole, _ = _fit(tmp_path / 'whole', 4)
  _fit(tmp_path / 'ckpt', 3)
  calls = _flaky_restore(monkeypatch, failures=train.RESTORE_ATTEMPTS - 1)
  resumed, history = _fit(tmp_path / 'ckpt', 4)
  assert len(calls) == train.RESTORE_ATTEMPTS and history['epochs'] == 4
  assert len(history['val_score']) == 1  # it resumed from step 3, the step that failed to read at first
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), resumed, whole)


def test_a_read_error_that_persists_is_raised_and_the_step_kept(tmp_path, monkeypatch):
  _fit(tmp_path / 'ckpt', 3)
  _flaky_restore(monkeypatch, failures=10**6)
  with pytest.raises(OSError, match=r'checkpoint step 3 in .*ckpt could not be read in 3 attempts .*so it is kept'):
    _fit(tmp_path / 'ckpt', 4)
  assert sorted(int(p.name) for p in (tmp_path / 'ckpt').iterdir() if p.name.isdigit()) == [2, 3]


def test_a_non_finite_loss_names_the_step_and_learning_rate(tmp_path):
  with pytest.raises(FloatingPointError, match=r'loss nan at step \d+ of epoch \d+ \(lr=1e\+30\)'):
    _fit(tmp_path / 'ckpt', 3, lr=1e30)


PROGRESS = re.compile(rb'^\d{4}-\d\d-\d\dT\S+ (.*)$', re.M)  # stitchjax.metrics.say, off a terminal


def _run(config, workdir, kill_at=None):
  """Runs run.py; with kill_at, SIGKILLs it at its kill_at-th progress line. Returns (finished, last
  progress line, number of progress lines)."""
  p = subprocess.Popen([sys.executable, 'run.py', '--config', str(config), f'--config.workdir={workdir}'],
                       cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  err = b''
  while chunk := os.read(p.stderr.fileno(), 1 << 16):
    err += chunk
    if kill_at is not None and len(PROGRESS.findall(err)) >= kill_at:
      p.send_signal(signal.SIGKILL)
      err += p.stderr.read()
      break
  p.wait()
  stages = [line.decode() for line in PROGRESS.findall(err)]
  assert p.returncode in (0, -signal.SIGKILL), err.decode(errors='replace')[-3000:]
  return p.returncode == 0, stages[-1] if stages else 'start-up', len(stages)


def test_killed_at_seeded_points_the_rerun_finishes_with_identical_results(tmp_path):
  config = H.run_config(tmp_path, {'train': 8, 'test': 3}, methods='lp,ffm_tlt', epochs=3, lrs='0.003,0.03',
                        export='ffm_tlt')
  finished, _, updates = _run(config, tmp_path / 'ref')
  assert finished
  # Kill points are progress lines (an epoch, a unit, a cell), not seconds: a re-run that finds its
  # programs in the compilation cache, or a machine busy with other work, would move a timed kill. Each re-run resumes and so has
  # less left to do; four kills of at most a quarter of the run each still land mid-run.
  kills = (np.random.default_rng(0).uniform(0.05, 0.25, 4) * updates).astype(int) + 1
  interrupted = []
  for kill_at in kills:
    finished, stage, _ = _run(config, tmp_path / 'faulty', kill_at=kill_at)
    interrupted.append(f'line {kill_at}: {"finished" if finished else stage}')
  assert _run(config, tmp_path / 'faulty')[0]
  print('kill points:', '; '.join(interrupted))
  ref = (tmp_path / 'ref' / 'results.json').read_text()
  assert (tmp_path / 'faulty' / 'results.json').read_text() == ref
  assert sum('finished' not in s for s in interrupted) >= 3  # most kills landed mid-run


@pytest.mark.parametrize('skip', [False, True])
def test_corrupt_images_are_named_or_skipped_and_counted(tmp_path, skip):
  from stitchjax import config_lib, protocol
  H.build('siglip', tmp_path / 'b')
  H.image_folder(tmp_path / 'data', {'train': 6, 'test': 2})
  bad = tmp_path / 'data' / 'test' / 'green' / '1.png'
  bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
  c = config_lib.stitching(str(tmp_path / 'work'), dict(kind='image_folder', root=str(tmp_path / 'data'),
                                                        skip_corrupt=skip),
                           backbones={'b': {'path': str(tmp_path / 'b'), 'image_size': 32}})
  c.pairs, c.layers = 'b:b', '1'
  c.train.batch_size = {'lfm': 8, 'default': 8}
  if not skip:
    with pytest.raises(ValueError, match=f'1 unreadable image.* in the test split:\n  {bad}'):
      protocol.runner(c)
    return
  with pytest.warns(UserWarning, match='skipping 1 unreadable test image'):
    runner = protocol.runner(c)
  assert runner.skipped == {'train': 0, 'val': 0, 'test': 1} and len(runner.data.splits['test']) == 5


def test_config_errors_before_compute_name_the_field(tmp_path):
  from stitchjax import config_lib, protocol
  H.build('siglip', tmp_path / 'b')
  H.image_folder(tmp_path / 'data', {'train': 4, 'test': 2})
  c = config_lib.stitching(str(tmp_path / 'work'), dict(kind='image_folder', root=str(tmp_path / 'data'),
                                                        val_fraction=0.25),
                           backbones={'b': {'path': str(tmp_path / 'b'), 'image_size': 32}})
  c.pairs = 'b:b'
  c.train.batch_size = {'lfm': 8, 'default': 8}
  c.layers = '1,3'
  with pytest.raises(ValueError, match=r"config.layers: layer 3 is outside 1..2 for backbone 'b'"):
    protocol.runner(c)
  c.layers = '1'
  c.train.batch_size = {'lfm': 0, 'default': 8}
  with pytest.raises(ValueError, match=r'config.train.batch_size.lfm=0 must be positive'):
    protocol.validate(c)
  c.train.batch_size = {'lfm': 8, 'default': 8}
  c.data.root = str(tmp_path / 'nowhere')
  with pytest.raises((ValueError, FileNotFoundError), match='nowhere'):
    protocol.runner(c)


def test_a_workdir_refuses_another_dataset(tmp_path):
  from stitchjax import config_lib, protocol
  H.build('siglip', tmp_path / 'b')
  H.image_folder(tmp_path / 'data', {'train': 4, 'test': 2})
  c = config_lib.stitching(str(tmp_path / 'work'), dict(kind='image_folder', root=str(tmp_path / 'data'),
                                                        val_fraction=0.25),
                           backbones={'b': {'path': str(tmp_path / 'b'), 'image_size': 32}})
  c.pairs, c.layers = 'b:b', '1'
  c.train.batch_size = {'lfm': 8, 'default': 8}
  protocol.runner(c)
  protocol.runner(c)  # the same setup resumes
  c.data.classes = ('red', 'green')
  with pytest.raises(ValueError, match='class-count mismatch: .* 3 classes, but config.data gives 2'):
    protocol.runner(c)
  c.data.classes = None
  c.train.lrs = '0.5'
  with pytest.raises(ValueError, match=r"different train \(\['train'\]\)"):
    protocol.runner(c)


def test_a_failed_cell_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
  import json
  from stitchjax import config_lib, protocol
  H.build('siglip', tmp_path / 'b')
  H.image_folder(tmp_path / 'data', {'train': 4, 'test': 2})
  c = config_lib.stitching(str(tmp_path / 'work'), dict(kind='image_folder', root=str(tmp_path / 'data')),
                           backbones={'b': {'path': str(tmp_path / 'b'), 'image_size': 32}})
  with pytest.raises(ValueError, match=r'the val split of config.data is empty \(data.val_fraction=0.1'):
    protocol.runner(c)
  c.data.val_fraction = 0.25
  c.workdir = str(tmp_path / 'work2')
  c.pairs, c.layers, c.methods = 'b:b', '1', 'lp,lfm'
  c.train.batch_size = {'lfm': 8, 'default': 8}
  c.train.epochs, c.train.lrs = 1, '0.01'

  def nan(self, cell):
    raise FloatingPointError(f'{cell.id} lr=0.01: loss nan at step 3 of epoch 0')
  monkeypatch.setattr(protocol.Runner, "lp", nan)
  with pytest.warns(UserWarning, match='cell lp__b failed'):
    records = protocol.run(c)
  failed = [r for r in records if r['metric'] == 'failed']
  assert len(failed) == 1 and failed[0]['method'] == 'lp' and 'step 3' in failed[0]['error']
  assert any(r['method'] == 'lfm' and r['metric'] == 'accuracy' for r in records)  # the next cell ran
  assert json.loads((tmp_path / 'work2' / 'results.json').read_text()) == records
