"""The mini-VFM demo: the committed mini-VFMs and a shortened demo run end to end."""
import importlib.util
import json
import pathlib

import pytest

from stitchjax import config_lib, jobs, mini

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
def test_shortened_demo_yields_every_expected_record_and_the_stitch_point_gap(tmp_path):
  c = _demo_config(tmp_path)
  c.data.limit_per_class = 30
  c.layers = '2'
  c.train.epochs, c.train.patience, c.train.lrs = 2, 1, '0.01'
  jobs.run(c)
  work = pathlib.Path(c.workdir)
  records = json.loads((work / 'results.json').read_text())
  have = {(r['source'], r['target'], r['layer'], r['method'], r['split'], r['metric']) for r in records}
  names = sorted(config_lib.MINI_VFMS)
  want = {(b, b, None, 'lp', 'test', 'accuracy') for b in names}
  for s in names:
    for t in names:  # both directions and both self-stitches
      for layer in (2,):
        want |= {(s, t, layer, m, 'test', 'accuracy') for m in ('lfm', 'ffm', 'tlt', 'ffm_tlt')}
        want |= {(s, t, layer, m, 'test', d) for m in ('lfm', 'ffm') for d in ('layer_distance', 'final_distance')}
  assert want <= have, sorted(want - have)
  # What holds with margin at the shallowest stitch point (2026-11-23 full demo: 2.9x; this short run, 2026-12-03:
  # 1.50 against 5.97): LFM, which optimises the stitch point, ends there well over 2x closer to the target's tokens
  # than FFM. Figure 2's other half, FFM's smaller final-layer distance, is reported (report.md), not asserted:
  # short runs have not always shown it.
  value = {(r['source'], r['target'], r['layer'], r['method'], r['metric']): r['value'] for r in records}
  lfm, ffm = (value['siglip_mini', 'dino_mini', 2, m, 'layer_distance'] for m in ('lfm', 'ffm'))
  assert lfm < 0.5 * ffm, (lfm, ffm)
  report = (work / 'report.md').read_text()
  assert 'What it does not show' in report and 'mini models trained by stitchjax' in report
  for name in ('tables.md', 'accuracy_mlp.png'):
    assert (work / name).stat().st_size > 500

  # The scout in the same workdir: every layer of every route, then checked against the run's FFM->TLT cells.
  c.job = 'scout'
  jobs.run(c)
  scout = json.loads((work / 'scout.json').read_text())
  measured = {(r['source'], r['target'], r['layer'], r['metric']) for r in scout['records']}
  assert measured == {(s, t, layer, proxy) for s in names for t in names for layer in range(1, 8)
                      for proxy in ('lfm_error', 'lfm_r2', 'ffm_error', 'ffm_r2', 'ffm_probe', 'cka')}
  validation = json.loads((work / 'scout_validation.json').read_text())
  assert validation['cells'] == 4 and validation['metric'] == 'accuracy'
  report = (work / 'report.md').read_text()
  assert 'What it does not show' in report and '# Where to stitch: the scout' in report
  assert 'The scout against ffm_tlt' in (work / 'tables.md').read_text()
  assert (work / 'scout.png').stat().st_size > 500
