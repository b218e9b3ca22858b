"""The stitching protocol end to end on tiny random transformers backbones and a tiny image-folder task."""
import dataclasses
import json
import pathlib

import numpy as np
import pytest

import helpers as H
from stitchjax import checkpoints, config_lib, jobs, load_stitched, protocol, train
from stitchjax.records import PAIR_ARROW


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('protocol')
  c = H.tiny_config(root)
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


def test_the_runs_exports_reproduce_its_predictions(setup):
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


def test_the_plan_of_a_finished_run_says_done_and_sizes_its_cache_exactly(setup):
  from stitchjax import plan
  config, _ = setup
  done = plan.make(config)
  assert set(done.cells.values()) == {'done'} and done.units == done.units_done > 0
  cache = pathlib.Path(config.workdir) / 'cache'
  assert done.cache_bytes == sum(np.load(f, mmap_mode='r').nbytes for f in cache.rglob('*.npy'))  # headers aside


def test_remat_switch_reaches_the_target_suffix(setup):
  config, _ = setup
  runner = protocol.runner(config)
  cell = protocol.Cell('dinov2', 'siglip', 1, 'ffm', 'mlp')
  assert not runner._stitched(cell)[0].target.remat
  remat = config.copy_and_resolve_references()
  remat.remat = True
  model = protocol.runner(remat)._stitched(cell)[0]
  assert model.target.remat and model.target == dataclasses.replace(runner._stitched(cell)[0].target, remat=True)
