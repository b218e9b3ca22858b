"""The stitching protocol end to end on tiny random transformers backbones and a tiny image-folder task."""
import dataclasses
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import helpers as H
from stitchjax import checkpoints, config_lib, jobs, load_stitched, protocol, train
from stitchjax.records import PAIR_ARROW

ROOT = pathlib.Path(__file__).resolve().parents[1]
@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('protocol')
  H.build('dinov2_registers', root / 'dinov2')
  H.build('siglip', root / 'siglip')
  H.image_folder(root / 'data', {'train': 12, 'test': 4})
  c = config_lib.stitching(str(root / 'work'), dict(kind='image_folder', root=str(root / 'data'), val_fraction=0.25,
                                                    seed=0),
                           backbones={'dinov2': {'path': str(root / 'dinov2'), 'image_size': 42},
                                      'siglip': {'path': str(root / 'siglip'), 'image_size': 32}})
  c.pairs = 'dinov2:siglip'
  c.layers = '1'
  c.dtype = 'float32'
  c.train.epochs, c.train.patience, c.train.lrs = 3, 2, '0.01'
  c.train.batch_size = {'lfm': 8, 'default': 8}
  c.feature_batch_size = 8
  c.export = 'tlt,ffm_tlt'
  jobs.run(c)
  return c, root


def test_every_cell_is_recorded(setup):
  config, _ = setup
  records = json.loads((pathlib.Path(config.workdir) / 'results.json').read_text())
  keys = {(r['source'], r['target'], r['layer'], r['method']) for r in records if r['metric'] == 'accuracy'}
  assert ('dinov2', 'dinov2', None, 'lp') in keys and ('siglip', 'siglip', None, 'lp') in keys
  for route in (('dinov2', 'dinov2'), ('siglip', 'siglip'), ('dinov2', 'siglip')):  # with both self-stitches
    for method in ('lfm', 'ffm', 'tlt', 'ffm_tlt'):
      assert (*route, 1, method) in keys
  for r in records:
    assert set(r) >= {'source', 'target', 'layer', 'method', 'stitch_layer', 'split', 'metric', 'value'}
    if r['metric'] == 'accuracy':
      assert 0.0 <= r['value'] <= 1.0
  distances = [r for r in records if r['metric'] in ('layer_distance', 'final_distance')]
  assert {r['method'] for r in distances} == {'lfm', 'ffm'} and all(r['split'] == 'test' for r in distances)
  tables = (pathlib.Path(config.workdir) / 'tables.md').read_text()
  for title in ('Table 1', 'Table 2', 'Table 4', 'Figure 2'):
    assert title in tables
  assert (pathlib.Path(config.workdir) / 'accuracy_mlp.png').stat().st_size > 1000


def test_rerun_computes_nothing(setup, monkeypatch):
  config, _ = setup
  before = (pathlib.Path(config.workdir) / 'results.json').read_text()
  monkeypatch.setattr(train, 'fit', lambda *a, **k: pytest.fail('a finished unit was retrained'))
  jobs.run(config)
  assert (pathlib.Path(config.workdir) / 'results.json').read_text() == before


def test_an_interrupted_cell_resumes_to_the_same_result(setup):
  config, _ = setup
  work = pathlib.Path(config.workdir)
  cell = 'dinov2__siglip__L1__ffm_tlt__mlp'
  before = json.loads((work / 'cells' / cell / 'result.json').read_text())
  # As if killed after the second epoch: drop the finished marks and the last epoch's checkpoint.
  (work / 'cells' / cell / 'result.json').unlink()
  unit = work / 'cells' / cell / 'tlt' / 'lr_0.01'
  (unit / 'done.json').unlink()
  steps = sorted(int(p.name) for p in (unit / 'ckpt').iterdir() if p.name.isdigit())
  import shutil
  shutil.rmtree(unit / 'ckpt' / str(steps[-1]))
  jobs.run(config)
  assert json.loads((work / 'cells' / cell / 'result.json').read_text()) == before


def test_a_workdir_refuses_a_backbone_run_at_another_image_size(setup, tmp_path):
  """DINOv3's RoPE has the same parameters at every resolution: the parameter digest alone would let a run at
  another image_size reuse cells computed at the old one."""
  _, root = setup
  H.build('dinov3', tmp_path / 'dinov3')
  c = config_lib.stitching(str(tmp_path / 'work'), dict(kind='image_folder', root=str(root / 'data'),
                                                        val_fraction=0.25, seed=0),
                           backbones={'a': {'path': str(tmp_path / 'dinov3'), 'image_size': 32}})
  c.pairs, c.methods, c.layers = 'a:a', 'lp', '1'
  protocol.runner(c)  # records the workdir's identity
  protocol.runner(c)  # the same setup is welcome
  c.backbones.a.image_size = 64
  with pytest.raises(ValueError, match=r"different backbones \(\['a'\]\)"):
    protocol.runner(c)


def test_export_reloads_and_reproduces_predictions(setup):
  config, root = setup
  work = pathlib.Path(config.workdir)
  cell = 'dinov2__siglip__L1__tlt__mlp'
  model = load_stitched(work / 'exports' / cell)
  assert model.classes == sorted(H.IMAGE_CLASSES)  # image folders: sorted class names
  from stitchjax import data as data_lib
  test = data_lib.load(config.data).splits['test']
  logits = model.logits([test.image(i) for i in range(len(test))])
  np.testing.assert_array_equal(logits.argmax(-1), np.load(work / 'cells' / cell / 'test_predictions.npy'))


def test_the_api_fit_is_the_protocols_trainer(setup):
  """stitchjax.stitch + stitchjax.fit on the run's images give the protocol's tlt unit, bit for bit."""
  import jax
  import stitchjax
  from stitchjax import data as data_lib
  config, _ = setup
  work, c = pathlib.Path(config.workdir), config
  bbs = {n: stitchjax.load_backbone(c.backbones[n].path, image_size=c.backbones[n].image_size) for n in ('dinov2', 'siglip')}
  model = stitchjax.stitch(bbs['dinov2'], bbs['siglip'], layer=1, kind='mlp', num_classes=3, dtype=c.dtype)
  splits = data_lib.load(c.data).splits
  data = {s: {'image': [splits[s].image(i) for i in range(len(splits[s]))], 'label': splits[s].labels}
          for s in ('train', 'val')}
  params = stitchjax.fit(model, model.init(jax.random.key(c.seed)), data['train'], loss='tlt', val=data['val'],
                         lr=float(c.train.lrs), epochs=c.train.epochs, patience=c.train.patience,
                         batch_size=c.train.batch_size['default'], weight_decay=c.train.weight_decay, seed=c.seed)
  unit = work / 'cells' / 'dinov2__siglip__L1__tlt__mlp' / 'tlt' / 'lr_0.01' / 'params'
  jax.tree.map(np.testing.assert_array_equal, params, checkpoints.load_tree(unit, params))


def test_every_run_gets_a_report_of_what_it_measured(setup):
  config, _ = setup
  report = (pathlib.Path(config.workdir) / 'report.md').read_text()
  assert report.startswith('# What the run shows') and 'demo' not in report and 'mini' not in report
  assert 'over n = 12 test examples' in report  # 4 images of each of the 3 classes
  route = f'dinov2{PAIR_ARROW}siglip'
  for claim in (f'Stitched vs self-stitched ({route}, FFM→TLT):** beats both self-stitches by more than two standard '
                'errors at ', f'FFM vs LFM ({route}):** FFM reaches the smaller final-feature distance at ',
                'LFM reaches the smaller distance at the stitch point at ', f'Against linear probes ({route}):**'):
    assert claim in report, claim
  assert ' of 1 layers' in report and 'What it does not show' in report


def test_a_moved_export_finds_its_backbones_or_is_told_where(setup, tmp_path):
  """Relative paths travel with a tree moved whole; backbones moved elsewhere are named at load, digest-checked."""
  import shutil
  from convert.common import CheckpointError
  config, root = setup
  cell = 'dinov2__siglip__L1__tlt__mlp'
  meta = json.loads((pathlib.Path(config.workdir) / 'exports' / cell / 'stitched.json').read_text())
  assert meta['backbones']['source']['relative'] == '../../../dinov2'
  images = [np.full((40, 48, 3), 50 * i, np.uint8) for i in range(3)]
  reference = load_stitched(pathlib.Path(config.workdir) / 'exports' / cell).logits(images)
  moved = tmp_path / 'moved'  # the whole tree, as on another machine
  for name in ('work', 'dinov2', 'siglip'):
    shutil.copytree(root / name, moved / name)
  alone = tmp_path / 'alone'  # the export alone
  shutil.copytree(moved / 'work' / 'exports' / cell, alone)
  for name in ('dinov2', 'siglip'):  # the recorded absolute paths are gone
    (root / name).rename(root / f'{name}.away')
  try:
    np.testing.assert_array_equal(load_stitched(moved / 'work' / 'exports' / cell).logits(images), reference)
    with pytest.raises(CheckpointError, match=r"target backbone: .*siglip.*load_stitched\(\.\.\., target="):
      load_stitched(alone, source=moved / 'dinov2')
    np.testing.assert_array_equal(load_stitched(alone, source=moved / 'dinov2', target=moved / 'siglip').logits(images),
                                  reference)
    H.build('siglip', tmp_path / 'other_siglip', seed=1)
    with pytest.raises(CheckpointError, match='target backbone at .*other_siglip is not the checkpoint'):
      load_stitched(alone, source=moved / 'dinov2', target=tmp_path / 'other_siglip')
  finally:
    for name in ('dinov2', 'siglip'):
      (root / f'{name}.away').rename(root / name)


def test_plan_reads_configs_not_weights_and_knows_what_is_done(setup, tmp_path, monkeypatch):
  config, root = setup
  from stitchjax import backbone, plan
  monkeypatch.setattr(backbone, 'load_backbone', lambda *a, **k: pytest.fail('the plan loaded weights'))
  done = plan.make(config)
  assert set(done.cells.values()) == {'done'} and done.units == done.units_done > 0
  assert {n: c.depth for n, c in done.configs.items()} == {'dinov2': 3, 'siglip': 3}
  cache = pathlib.Path(config.workdir) / 'cache'
  assert done.cache_bytes == sum(np.load(f, mmap_mode='r').nbytes for f in cache.rglob('*.npy'))  # headers aside

  fresh = config.copy_and_resolve_references()
  fresh.workdir = str(tmp_path / 'fresh')
  fresh.train.lrs = '0.01,0.03'
  (tmp_path / 'fresh' / 'cells' / 'dinov2__siglip__L1__ffm__mlp' / 'match').mkdir(parents=True)
  todo = plan.make(fresh)
  # the ffm cell has begun, and so has ffm_tlt, whose matching stage it shares
  assert {c for c, status in todo.cells.items() if status == 'partial'} == {'dinov2__siglip__L1__ffm__mlp',
                                                                           'dinov2__siglip__L1__ffm_tlt__mlp'}
  assert todo.units == 2 * done.units and todo.units_done == 0


@pytest.mark.parametrize('field, value, message', [
    ('layers', '1,x', r"config.layers: entry 'x' is not an integer \(in '1,x'\)"),
    ('layers', '1,2.5', r"config.layers: entry '2.5' is not an integer"),
    ('layers', '1,3', r"config.layers: layer 3 is outside 1..2 for backbone 'dinov2'"),
])
def test_plan_names_the_field_and_entry_that_is_wrong(setup, field, value, message):
  from stitchjax import plan
  config = setup[0].copy_and_resolve_references()
  config[field] = value
  with pytest.raises(ValueError, match=message):
    plan.make(config)
  config = setup[0].copy_and_resolve_references()
  config.train.lrs = '0.01,fast'
  with pytest.raises(ValueError, match=r"config.train.lrs: entry 'fast' is not a number"):
    plan.make(config)


def test_plan_job_and_command_line_overrides():
  result = subprocess.run([sys.executable, 'run.py', '--config', 'configs/fmow.py', '--config.job=plan',
                           '--config.layers=14,22', '--config.pairs=dinov2:clip', '--config.methods=lp,ffm_tlt'],
                          cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  cells = dict(line.split() for line in result.stdout.splitlines() if line.endswith(('pending', 'partial', 'done')))
  assert cells['lp__clip'] == cells['dinov2__clip__L22__ffm_tlt__mlp'] == cells['clip__clip__L14__ffm_tlt__mlp'] == 'pending'
  assert not any('siglip2' in cell or 'L2_' in cell for cell in cells)
  # The paper's checkpoints and fMoW are not on this machine: the plan says so and plans the rest.
  assert 'dinov2: not read (checkpoints/dinov2-large: no such file or directory' in result.stdout
  assert 'data: not readable here' in result.stdout and 'feature cache size unknown' in result.stdout


def test_remat_switch_reaches_the_target_suffix(setup):
  config, _ = setup
  runner = protocol.runner(config)
  cell = protocol.Cell('dinov2', 'siglip', 1, 'ffm', 'mlp')
  assert not runner._stitched(cell)[0].target.remat
  remat = config.copy_and_resolve_references()
  remat.remat = True
  model = protocol.runner(remat)._stitched(cell)[0]
  assert model.target.remat and model.target == dataclasses.replace(runner._stitched(cell)[0].target, remat=True)
