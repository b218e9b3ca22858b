"""The scout's proxies: exact where the answer is known (a model against a channel-permuted copy of itself, a
layer against itself), against direct references (CKA from explicit kernel matrices, least squares), and the
closed-form stitch against the linear stitch layer it stands for."""
import jax
import numpy as np
import pytest

from stitchjax import preprocess, scouting, tasks, vit
from stitchjax import stitch_layers as stitch_lib
from stitchjax.backbone import Backbone

import helpers

CFG = vit.ViTConfig(family='siglip', depth=4, dim=24, heads=2, mlp_dim=40, patch_size=4, image_size=16,
                    cls_token=False, pool='map', layer_scale=True)
# Where each parameter meets the residual stream: rows that read it, columns that write it, channel vectors.
READS = {'q', 'k', 'v', 'fc1'}
WRITES = {'patch', 'o', 'fc2'}
CHANNELS = {'norm1', 'norm2', 'norm', 'pos', 'cls', 'registers', 'ls1', 'ls2', 'probe'}


def permuted(params, perm):
  """The same function with the residual stream's channels permuted: every weight permuted to match."""
  def one(path, leaf):
    names = [p.key for p in path]
    owner, name = (names[-2] if len(names) > 1 else ''), names[-1]
    if owner in READS and name == 'kernel':
      return np.take(leaf, perm, axis=-2)
    if owner in WRITES or owner in CHANNELS or name in CHANNELS:
      return np.take(leaf, perm, axis=-1)
    assert owner in READS and name == 'bias', names  # the only weights that never touch the stream
    return leaf
  return jax.tree_util.tree_map_with_path(one, jax.tree.map(np.asarray, params))


def backbone(params) -> Backbone:
  return Backbone(CFG, params, preprocess.for_family('siglip', CFG.image_size))


@pytest.fixture(scope='module')
def models():
  params = vit.init_params(CFG, jax.random.key(0))
  perm = np.random.default_rng(0).permutation(CFG.dim)
  return {'orig': backbone(params), 'copy': backbone(permuted(params, perm)),
          'random': backbone(vit.init_params(CFG, jax.random.key(1)))}, perm


def data(n: int, seed: int, task='classification'):
  """Random images whose classes (or pixel classes) follow their brightness, so a probe has something to find."""
  images = np.random.default_rng(seed).integers(0, 256, (n, CFG.image_size, CFG.image_size, 3), dtype=np.uint8)
  if task == 'classification':
    labels = np.digitize(images.mean((1, 2, 3)), np.quantile(images.mean((1, 2, 3)), [1 / 3, 2 / 3]))
  else:  # annotation values 1..3 by pixel brightness, 0 (ignored) at the darkest
    labels = np.digitize(images.mean(-1), [40, 110, 180]).astype(np.uint8)
  return scouting.Images(lambda idx: images[idx], labels)


def by_key(records) -> dict:
  return {(r['source'], r['target'], r['layer'], r['metric']): r['value'] for r in records}


def test_the_permuted_copy_computes_the_same_function(models):
  bbs, perm = models
  images = np.asarray(data(4, 0).read(np.arange(4)), np.float32) / 255
  ours, copy = (vit.forward(CFG, bbs[n].params, images) for n in ('orig', 'copy'))
  np.testing.assert_allclose(copy[0], ours[0][..., perm], atol=1e-5)
  np.testing.assert_allclose(copy[1], ours[1][..., perm], atol=1e-5)


@pytest.mark.parametrize('task', ['classification', 'segmentation'])
def test_a_permuted_copy_is_exactly_linearly_stitchable_and_a_random_model_is_not(models, task):
  bbs, _ = models
  t = tasks.make(task, label_size=CFG.image_size)
  routes = [('orig', 'copy'), ('orig', 'orig'), ('orig', 'random')]
  records = scouting.measure(bbs, routes, data(96, 1, task), data(48, 2, task), t, 3, batch_size=32)
  v = by_key(records)
  for n in range(1, CFG.depth):
    assert v['orig', 'copy', n, 'lfm_error'] < 1e-3 and v['orig', 'copy', n, 'lfm_r2'] > 1 - 1e-5
    assert v['orig', 'copy', n, 'ffm_error'] < 1e-3 and v['orig', 'copy', n, 'ffm_r2'] > 1 - 1e-5
    assert abs(v['orig', 'copy', n, 'cka'] - 1) < 1e-6
    # The probe of the stitched model is the original's own probe.
    assert v['orig', 'copy', n, 'ffm_probe'] == pytest.approx(v['orig', 'orig', n, 'ffm_probe'], abs=1e-6)
    assert v['orig', 'random', n, 'lfm_error'] > 0.1 and v['orig', 'random', n, 'lfm_r2'] < 0.99
    assert v['orig', 'random', n, 'ffm_error'] > 0.1 and v['orig', 'random', n, 'cka'] < 0.99
  # A layer with itself: CKA 1, and the closed form is the identity.
  assert all(abs(v['orig', 'orig', n, 'cka'] - 1) < 1e-6 for n in range(1, CFG.depth))
  chance = 1 / 3 if task == 'classification' else 0.0
  assert v['orig', 'orig', 1, 'ffm_probe'] > chance


def explicit_cka(x, y):
  """Debiased linear CKA from the n x n kernel matrices (Song et al. 2012's unbiased HSIC)."""
  def hsic(k, l):
    n = len(k)
    k, l = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    return (np.trace(k @ l) + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2 * k.sum(0) @ l.sum(0) / (n - 2)) / (n * (n - 3))
  k, l = x @ x.T, y @ y.T
  return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def layer_sums(x, y, shift=True):
  """scouting's sums of token pairs x (B, T, D_x) -> y (B, T, D_y), one layer, through a route that aligns
  nothing (same layout both sides)."""
  s = vit.ViTConfig(family='t', depth=2, dim=x.shape[-1], heads=1, mlp_dim=4, patch_size=1, image_size=3)
  t = vit.ViTConfig(family='t', depth=2, dim=y.shape[-1], heads=1, mlp_dim=4, patch_size=1, image_size=3)
  route, mask = scouting.Route(s, t), np.ones(len(x), np.float32)
  zero = {'x': np.zeros((1, s.dim), np.float32), 'y': np.zeros((1, t.dim), np.float32)}
  first = jax.tree.map(np.asarray, scouting._pair_sums(route, x[None], y[None], mask, zero))
  shifts = {'x': first['x'] / first['n'], 'y': first['y'] / first['n']} if shift else zero
  sums = jax.tree.map(lambda a: np.asarray(a, np.float64), scouting._pair_sums(route, x[None], y[None], mask, shifts))
  return {k: v[0] if np.ndim(v) else v for k, v in sums.items()} | {'shift_x': shifts['x'][0], 'shift_y': shifts['y'][0]}


@pytest.mark.parametrize('shift', [True, False])
def test_cka_from_sums_equals_cka_from_kernel_matrices(shift):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((6, 10, 5)).astype(np.float32) + 3  # off-centre, as residual streams are
  y = (x @ rng.standard_normal((5, 4)) + rng.standard_normal((6, 10, 4))).astype(np.float32)
  want = explicit_cka(x.reshape(-1, 5).astype(np.float64), y.reshape(-1, 4).astype(np.float64))
  assert scouting.cka(layer_sums(x, y, shift)) == pytest.approx(want, abs=1e-5)
  assert scouting.cka(layer_sums(x, x, shift)) == pytest.approx(1.0, abs=1e-6)


def test_ridge_is_least_squares_with_an_intercept():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((8, 10, 5)).astype(np.float32) * 4 + 7
  y = (x @ rng.standard_normal((5, 3)) + 2.5 + 0.1 * rng.standard_normal((8, 10, 3))).astype(np.float32)
  fit = scouting.ridge(layer_sums(x, y), 1e-9)
  design = np.concatenate([x.reshape(-1, 5), np.ones((80, 1))], 1).astype(np.float64)
  want = np.linalg.lstsq(design, y.reshape(-1, 3).astype(np.float64), rcond=None)[0]
  np.testing.assert_allclose(fit['kernel'], want[:5], atol=1e-4)
  np.testing.assert_allclose(fit['bias'], want[5], atol=1e-3)


@pytest.mark.parametrize('source,target', [('cls', 'cls+registers'), ('none', 'cls'), ('cls+registers', 'none')])
def test_the_closed_form_stitch_is_a_linear_stitch_and_commutes_with_alignment(source, target):
  s = helpers.vit_config(source, dim=8, grid=3)
  t = helpers.vit_config(target, dim=6, grid=2)  # the grids differ: patches are resampled
  route, rng = scouting.Route(s, t), np.random.default_rng(2)
  stitch = {'kernel': rng.standard_normal((8, 6)).astype(np.float32), 'bias': rng.standard_normal(6).astype(np.float32),
            'registers': rng.standard_normal((route.registers, 6)).astype(np.float32)}
  tokens = rng.standard_normal((2, s.num_tokens, 8)).astype(np.float32)
  ours = route.stitch(stitch, tokens)
  params = {'linear': {'kernel': stitch['kernel'], 'bias': stitch['bias']}}
  if route.registers:
    params['registers'] = stitch['registers']
  np.testing.assert_allclose(ours, stitch_lib.apply(stitch_lib.StitchSpec('linear', s, t, 1), params, tokens), atol=1e-5)
  rows = route.fitted_rows().astype(bool)  # what the regression fits: align first, then the affine map
  np.testing.assert_allclose((route.aligned(tokens) @ stitch['kernel'] + stitch['bias'])[:, rows], ours[:, rows],
                             atol=1e-5)


def test_recommend_orients_each_proxy_and_breaks_ties_to_the_shallower_layer():
  def rec(metric, layer, value):
    return {'source': 'a', 'target': 'b', 'layer': layer, 'metric': metric, 'value': value}
  records = [rec('ffm_probe', 1, 0.5), rec('ffm_probe', 2, 0.7), rec('ffm_probe', 3, 0.7),
             rec('lfm_error', 1, 0.3), rec('lfm_error', 2, 0.1), rec('lfm_error', 3, 0.2)]
  assert scouting.recommend(records, 'ffm_probe', 2) == {('a', 'b'): [2, 3]}
  assert scouting.recommend(records, 'lfm_error', 1) == {('a', 'b'): [2]}
  with pytest.raises(ValueError, match='rank_by'):
    scouting.recommend(records, 'accuracy')
