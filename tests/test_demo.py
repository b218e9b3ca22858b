"""The mini-VFM demo: the committed mini-VFMs and a shortened demo run end to end."""
import importlib.util
import json
import pathlib

import pytest

from stitchjax import config_lib, experiment, mini

ROOT = pathlib.Path(__file__).resolve().parents[1]
FASHION = pathlib.Path(mini.PROBE['root'])
needs_data = pytest.mark.skipif(not (FASHION / 'train-images-idx3-ubyte.gz').exists(),
                                reason='Fashion-MNIST missing: apt-get install dataset-fashion-mnist')
needs_weights = pytest.mark.skipif(not mini.RECORD.exists(), reason='mini-VFM weights missing: run configs/pretrain_mini.py')


@needs_data
@needs_weights
@pytest.mark.parametrize('name', sorted(config_lib.MINI_VFMS))
def test_committed_weights_give_their_recorded_probe_accuracy(name):
  recorded = json.loads(mini.RECORD.read_text())['test_accuracy'][name]
  assert recorded > 0.5  # far above chance (0.2) on the unseen classes
  assert abs(mini.reference_probe(config_lib.MINI_VFMS[name]['path']) - recorded) <= 0.01


def _demo_config(tmp_path):
  spec = importlib.util.spec_from_file_location('demo', ROOT / 'configs' / 'demo.py')
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  c = demo.get_config()
  c.workdir = str(tmp_path / 'demo')
  return c


@needs_data
@needs_weights
def test_shortened_demo_yields_every_expected_record(tmp_path):
  c = _demo_config(tmp_path)
  c.data.limit_per_class = 30
  c.layers = '2,6'
  c.train.epochs, c.train.patience, c.train.lrs = 2, 1, '0.01'
  experiment.run(c)
  work = pathlib.Path(c.workdir)
  records = json.loads((work / 'results.json').read_text())
  have = {(r['source'], r['target'], r['layer'], r['method'], r['split'], r['metric']) for r in records}
  names = sorted(config_lib.MINI_VFMS)
  want = {(b, b, None, 'lp', 'test', 'accuracy') for b in names}
  for s in names:
    for t in names:  # both directions and both self-stitches
      for layer in (2, 6):
        want |= {(s, t, layer, m, 'test', 'accuracy') for m in ('lfm', 'ffm', 'tlt', 'ffm_tlt')}
        want |= {(s, t, layer, m, 'test', d) for m in ('lfm', 'ffm') for d in ('layer_distance', 'final_distance')}
  assert want <= have, sorted(want - have)
  report = (work / 'report.md').read_text()
  assert 'What it does not show' in report and 'mini models trained by stitchjax' in report
  for name in ('tables.md', 'accuracy_mlp.png'):
    assert (work / name).stat().st_size > 500


@needs_data
@needs_weights
def test_ffm_matches_the_final_features_better_than_lfm_at_the_shallowest_stitch(tmp_path):
  """Figure 2's claim, as measured on the mini-VFMs: at the shallowest stitch point FFM's stitched model
  ends closer to the target's final features than LFM's, and LFM is the closer at the stitch point,
  which is what it optimises. (This shortened run measured final 0.352 vs 0.397 on 2026-11-23.)"""
  c = _demo_config(tmp_path)
  c.pairs, c.layers, c.methods = 'dino_mini:siglip_mini', '2', 'lfm,ffm'
  c.data.limit_per_class = 40
  c.train.epochs = 4
  experiment.run(c)
  records = json.loads((pathlib.Path(c.workdir) / 'results.json').read_text())
  d = {(r['method'], r['metric']): r['value'] for r in records
       if (r['source'], r['target'], r['layer']) == ('dino_mini', 'siglip_mini', 2) and r['metric'].endswith('distance')}
  assert d['ffm', 'final_distance'] < 0.95 * d['lfm', 'final_distance'], d
  assert d['lfm', 'layer_distance'] < 0.95 * d['ffm', 'layer_distance'], d
