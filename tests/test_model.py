"""The public stitching API: stitchjax.stitch composes two backbones, stitchjax.fit trains it, and the
example in docs/ runs."""
import importlib.util
import pathlib

import jax
import numpy as np
import pytest

import helpers as H
import stitchjax
from stitchjax import mini, objectives

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def backbones(tmp_path_factory):
  root = tmp_path_factory.mktemp('model')
  H.build('dinov2_registers', root / 'dinov2')
  H.build('siglip', root / 'siglip', seed=1)
  return {'dinov2': stitchjax.load_backbone(root / 'dinov2', image_size=42),
          'siglip': stitchjax.load_backbone(root / 'siglip', image_size=32)}


def uint8_images(n: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, 40, 48, 3)).astype(np.uint8)


def identity(params: dict) -> dict:
  d = params['stitch']['linear']['kernel'].shape[0]
  return params | {'stitch': {'linear': {'kernel': np.eye(d, dtype=np.float32), 'bias': np.zeros(d, np.float32)}}}


@pytest.mark.parametrize('name', ['dinov2', 'siglip'])
def test_an_identity_self_stitch_is_the_backbone_itself(backbones, name):
  bb = backbones[name]
  model = stitchjax.stitch(bb, bb, layer=1, kind='linear')
  params = identity(model.init(jax.random.key(0)))
  x = model.preprocess(uint8_images(3))
  tokens, pooled = bb.forward(bb.params, x)
  np.testing.assert_array_equal(model.apply(params, x), tokens)
  np.testing.assert_array_equal(model.features(params, x), pooled)


def test_the_composition_is_source_prefix_stitch_target_suffix(backbones):
  src, tgt = backbones['dinov2'], backbones['siglip']
  model = stitchjax.stitch(src, tgt, layer=2, kind='mlp', num_classes=3)
  params = model.init(jax.random.key(1))
  params['head'] = {'kernel': np.random.default_rng(0).standard_normal((32, 3)).astype(np.float32),
                    'bias': np.arange(3, dtype=np.float32)}
  x = model.preprocess(uint8_images(2))
  assert set(params) == {'stitch', 'head'}
  from stitchjax import stitch_layers
  y = stitch_layers.apply(model.spec, params['stitch'], src.blocks(src.params, src.embed(src.params, x), 0, 2))
  want = tgt.final(tgt.params, tgt.blocks(tgt.params, y, 2, tgt.config.depth))
  np.testing.assert_allclose(model.apply(params, x), want, rtol=0, atol=1e-5)
  logits = model.logits(params, x)
  np.testing.assert_allclose(logits, tgt.pool(tgt.params, want) @ params['head']['kernel'] + params['head']['bias'],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(model.predict(params, x), np.asarray(logits).argmax(-1))
  with pytest.raises(ValueError, match="no 'head'.*num_classes"):
    model.logits({'stitch': params['stitch']}, x)


def test_a_segmenter_predicts_label_maps(backbones):
  bb = backbones['siglip']
  with pytest.raises(ValueError, match='label_size'):
    stitchjax.stitch(bb, bb, 1, task='segmentation', num_classes=4)
  model = stitchjax.stitch(bb, bb, 1, task='segmentation', num_classes=4, label_size=12)
  params = model.init(jax.random.key(0))
  assert model.logits(params, model.preprocess(uint8_images(2))).shape == (2, 12, 12, 4)


def _data(n, seed):
  return {'image': uint8_images(n, seed), 'label': np.arange(n) % 3}


def test_fit_trains_what_the_loss_reads_and_nothing_else(backbones):
  src, tgt = backbones['dinov2'], backbones['siglip']
  before = jax.tree.map(np.array, (src.params, tgt.params))
  model = stitchjax.stitch(src, tgt, layer=1, kind='mlp', num_classes=3)
  init = model.init(jax.random.key(0))
  train = _data(32, 0)
  ffm = stitchjax.fit(model, init, train, loss='ffm', lr=1e-2, epochs=6, patience=6, batch_size=16)
  jax.tree.map(np.testing.assert_array_equal, ffm['head'], init['head'])  # ffm reads no head
  inputs = objectives.stitch_inputs(model, train, 'ffm', 16)
  loss = lambda p: float(objectives.ffm_loss(model.net, p, model.frozen(with_source=False),
                                             inputs | {'mask': np.ones(32, np.float32)}))
  assert loss(ffm) < 0.8 * loss(init)
  tlt = stitchjax.fit(model, ffm, train, loss='tlt', lr=1e-2, epochs=3, patience=3, batch_size=16)
  assert not np.array_equal(tlt['head']['kernel'], ffm['head']['kernel'])
  jax.tree.map(np.testing.assert_array_equal, before, (src.params, tgt.params))


def test_ffm_tlt_is_ffm_then_tlt_and_a_killed_fit_resumes(backbones, tmp_path):
  model = stitchjax.stitch(backbones['siglip'], backbones['dinov2'], layer=1, kind='linear', num_classes=3)
  init, train, val = model.init(jax.random.key(0)), _data(16, 1), _data(8, 2)
  kw = dict(val=val, lr=1e-2, patience=4, batch_size=8)
  recipe = stitchjax.fit(model, init, train, loss='ffm_tlt', epochs=4, **kw)
  staged = stitchjax.fit(model, stitchjax.fit(model, init, train, loss='ffm', epochs=4, **kw), train, loss='tlt',
                         epochs=4, **kw)
  jax.tree.map(np.testing.assert_array_equal, recipe, staged)
  # Two epochs, then the same call for four in the same workdir: the epochs saved are not trained again.
  stitchjax.fit(model, init, train, loss='tlt', epochs=2, workdir=tmp_path, **kw)
  records = []
  resumed = stitchjax.fit(model, init, train, loss='tlt', epochs=4, workdir=tmp_path, log=records.append, **kw)
  assert [r['epoch'] for r in records] == [3, 4]
  jax.tree.map(np.testing.assert_array_equal, resumed, stitchjax.fit(model, init, train, loss='tlt', epochs=4, **kw))


@pytest.mark.parametrize('ahead', [True, False])
def test_fit_compiles_each_program_once(backbones, caplog, monkeypatch, ahead):
  """ffm_tlt's steps and validation programs compile once, at their first call or, as on accelerators,
  on a thread while the tokens compute (a batch size per case that no other test uses: cold caches)."""
  monkeypatch.setattr(objectives, 'compile_ahead', lambda: ahead)
  model = stitchjax.stitch(backbones['siglip'], backbones['dinov2'], layer=2, kind='mlp', num_classes=3)
  jax.config.update('jax_log_compiles', True)  # jax.log_compiles() would hold for this thread only
  try:
    with caplog.at_level('WARNING'):
      stitchjax.fit(model, model.init(jax.random.key(0)), _data(12, 3), loss='ffm_tlt', epochs=2,
                    batch_size=6 if ahead else 4)
  finally:
    jax.config.update('jax_log_compiles', False)
  compiled = [r.getMessage().split()[4] for r in caplog.records if r.getMessage().startswith('Finished XLA compilation')]
  assert {name: compiled.count(name) for name in ('jit(step)', 'jit(ffm_loss)', 'jit(predictions)')} == {
      'jit(step)': 2, 'jit(ffm_loss)': 1, 'jit(predictions)': 1}, compiled


def test_fit_names_what_is_wrong(backbones):
  model = stitchjax.stitch(backbones['dinov2'], backbones['siglip'], layer=1, kind='linear')
  params = model.init(jax.random.key(0))
  with pytest.raises(ValueError, match="loss='xfm' is not one of"):
    stitchjax.fit(model, params, _data(8, 0), loss='xfm')
  with pytest.raises(ValueError, match="loss='tlt' trains a head"):
    stitchjax.fit(model, params, _data(8, 0), loss='tlt')
  with pytest.raises(ValueError, match="data has no 'image'"):
    stitchjax.fit(model, params, {'images': uint8_images(8)}, batch_size=8)
  with_head = stitchjax.stitch(backbones['dinov2'], backbones['siglip'], layer=1, kind='linear', num_classes=3)
  with pytest.raises(ValueError, match=r"data\['label'\] has shape \(4,\), expected \(8,\)"):
    stitchjax.fit(with_head, with_head.init(jax.random.key(0)), {'image': uint8_images(8), 'label': np.zeros(4)},
                  loss='tlt', batch_size=8)


@pytest.mark.skipif(not (pathlib.Path(mini.PROBE['root']) / 'train-images-idx3-ubyte.gz').exists(),
                    reason='Fashion-MNIST missing: apt-get install dataset-fashion-mnist')
def test_the_documented_example_runs():
  spec = importlib.util.spec_from_file_location('api_example', ROOT / 'docs' / 'api_example.py')
  example = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(example)
  accuracy = example.main(['--per-class', '30', '--epochs', '3'])
  assert set(accuracy) == {'dino_mini->siglip_mini', 'siglip_mini->siglip_mini'}
  assert all(acc > 0.3 for acc in accuracy.values())  # chance is 0.2
