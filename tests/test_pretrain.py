"""stitchjax.pretrain: the DINO and SigLIP objectives, and the committed mini-VFM exports."""
import functools
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stitchjax import config_lib, data, preprocess, pretrain, vit
from stitchjax.backbone import load_backbone

needs_data = pytest.mark.skipif(not pathlib.Path(data.FASHION_MNIST_ROOT).is_dir(),
                                reason='Fashion-MNIST missing: apt-get install dataset-fashion-mnist')
TINY = dict(depth=2, dim=16, heads=2, mlp_dim=32, patch_size=7, image_size=28)
NORM = ([0.3, 0.3, 0.3], [0.35, 0.35, 0.35])


class Spec(dict):
  __getattr__ = dict.__getitem__


SPEC = Spec(lr=3e-3, warmup_steps=1, weight_decay=0.0, clip=10.0)


@functools.cache
def _fashion(n: int = 32) -> tuple[np.ndarray, np.ndarray]:
  split = data.load({'kind': 'fashion_mnist', 'classes': (0, 1, 2, 3, 4), 'limit_per_class': n // 5 + 1}).splits['train']
  return pretrain.images(split, 28)[:n], np.asarray(split.labels)[:n]


def _dino(**hp):
  cfg = vit.ViTConfig(family='dinov2', layer_scale=True, **TINY)
  hp = pretrain.Dino(prototypes=32, hidden=32, bottleneck=16, **hp)
  params, extra = pretrain.dino_init(cfg, hp, jax.random.key(0))
  return cfg, hp, params, extra


@needs_data
def test_dino_lowers_its_loss_on_real_images():
  # With the teacher and the centre held still (momenta 1), the student distils fixed targets, so the
  # loss must fall; with them moving, DINO's loss is not monotone by design.
  images, _ = _fashion()
  cfg, hp, params, extra = _dino(center_momentum=1.0)
  tx = pretrain.optimizer(SPEC, 20)
  step = jax.jit(functools.partial(pretrain.dino_step, cfg, hp, tx, NORM))
  state = pretrain.State(params, tx.init(params), extra)
  losses = []
  for i in range(20):
    state, metrics = step(state, images, jax.random.key(0), np.float32(1.0), np.float32(1.0))
    losses.append(float(metrics['loss']))
  assert np.isfinite(losses).all() and np.mean(losses[-3:]) < 0.8 * losses[0], losses
  for got, want in zip(jax.tree.leaves(state.extra['teacher']), jax.tree.leaves(params)):
    np.testing.assert_array_equal(got, want)


def test_dino_teacher_is_an_ema_and_gets_no_gradient():
  cfg, hp, student, extra = _dino()
  # Make the teacher differ from the student, so the EMA below is not trivially the identity.
  teacher = jax.tree.map(lambda p: p + 0.01, extra['teacher'])
  center = jnp.linspace(-0.1, 0.1, hp.prototypes)
  x = jax.random.normal(jax.random.key(1), (2, 4, 28, 28, 3))
  g_teacher = jax.jit(jax.grad(lambda t: pretrain.dino_loss(cfg, hp, student, t, center, x)[0]))(teacher)
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(g_teacher))
  g_student = jax.jit(jax.grad(lambda s: pretrain.dino_loss(cfg, hp, s, teacher, center, x)[0]))(student)
  assert float(jnp.abs(g_student['vit']['blocks']['attn']['q']['kernel']).max()) > 0

  tx = optax.sgd(0.1)
  state = pretrain.State(student, tx.init(student), {'teacher': teacher, 'center': center})
  images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
  step = jax.jit(functools.partial(pretrain.dino_step, cfg, hp, tx, NORM))
  new, _ = step(state, images, jax.random.key(2), np.float32(0.9), np.float32(1.0))
  want = jax.tree.map(lambda t, s: 0.9 * t + 0.1 * s, teacher, new.params)
  for got, expected in zip(jax.tree.leaves(new.extra['teacher']), jax.tree.leaves(want)):
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
  assert not np.allclose(new.params['head']['prototypes'], student['head']['prototypes'])


def test_dino_multi_crop_loss_averages_every_teacher_student_pair():
  cfg, hp, student, extra = _dino()
  teacher = jax.tree.map(lambda p: p + 0.01, extra['teacher'])
  center = jnp.linspace(-0.1, 0.1, hp.prototypes)
  global_views = jax.random.normal(jax.random.key(1), (2, 3, 28, 28, 3))
  local_views = jax.random.normal(jax.random.key(2), (2, 3, 14, 14, 3))
  loss, _ = pretrain.dino_loss(cfg, hp, student, teacher, center, global_views, local_views)
  t = [jax.nn.softmax((pretrain.dino_scores(cfg, hp, teacher, v) - center) / hp.teacher_temp) for v in global_views]
  small, small_vit = pretrain.at_size(cfg, student['vit'], 14)
  s = [jax.nn.log_softmax(pretrain.dino_scores(cfg, hp, student, v) / hp.student_temp) for v in global_views]
  s += [jax.nn.log_softmax(pretrain.dino_scores(small, hp, {**student, 'vit': small_vit}, v) / hp.student_temp)
        for v in local_views]
  h = lambda p, log_q: float(-jnp.mean(jnp.sum(p * log_q, -1)))
  want = np.mean([h(t[0], s[1]), h(t[0], s[2]), h(t[0], s[3]), h(t[1], s[0]), h(t[1], s[2]), h(t[1], s[3])])
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_at_size_resizes_patch_positions_and_keeps_the_cls_position():
  cfg, _, student, _ = _dino()
  same_cfg, same = pretrain.at_size(cfg, student['vit'], 28)
  np.testing.assert_allclose(same['embed']['pos'], student['vit']['embed']['pos'], atol=1e-6)
  small, params = pretrain.at_size(cfg, student['vit'], 14)  # a 4x4 grid of 7-pixel patches -> 2x2
  assert small.image_size == 14 and params['embed']['pos'].shape == (1 + 4, cfg.dim)
  np.testing.assert_array_equal(params['embed']['pos'][0], student['vit']['embed']['pos'][0])
  tokens = vit.embed(small, params, jnp.zeros((1, 14, 14, 3)))
  assert tokens.shape == (1, 5, cfg.dim)


def test_dino_prototypes_stay_frozen_when_asked_and_momentum_rises_to_one():
  cfg, hp, student, extra = _dino()
  tx = optax.sgd(0.1)
  state = pretrain.State(student, tx.init(student), extra)
  images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
  step = jax.jit(functools.partial(pretrain.dino_step, cfg, hp, tx, NORM))
  new, _ = step(state, images, jax.random.key(2), np.float32(0.9), np.float32(0.0))
  np.testing.assert_array_equal(new.params['head']['prototypes'], student['head']['prototypes'])
  hp = pretrain.Dino(momentum=0.99, freeze_prototypes_steps=3)
  schedule = [pretrain.dino_schedule(hp, s, 100) for s in (0, 2, 3, 50, 100)]
  np.testing.assert_allclose([s['momentum'] for s in schedule], [0.99, 0.99001, 0.99002, 0.995, 1.0], atol=1e-5)
  assert [float(s['train_prototypes']) for s in schedule] == [0, 0, 1, 1, 1]


def test_sinkhorn_knopp_balances_prototypes_and_normalises_samples():
  logits = jax.random.normal(jax.random.key(0), (64, 16)) * 2 + jnp.arange(16) * 0.5  # prototype 15 favoured
  q = np.asarray(pretrain.sinkhorn_knopp(logits, iterations=50), np.float64)
  np.testing.assert_allclose(q.sum(1), np.ones(64), rtol=1e-5)
  np.testing.assert_allclose(q.sum(0), np.full(16, 64 / 16), rtol=1e-3)
  # Only per-sample and per-prototype factors rescale exp(logits): log q - logits = u_i + v_k.
  residual = np.log(q) - np.asarray(logits, np.float64)
  residual = residual - residual.mean(0) - residual.mean(1, keepdims=True) + residual.mean()
  assert np.abs(residual).max() < 1e-4
  few = np.asarray(pretrain.sinkhorn_knopp(logits))  # DINOv2's 3 iterations already balance most of the way
  assert few.sum(0).std() < 0.2 * np.asarray(jax.nn.softmax(logits, 1)).sum(0).std()


def test_sigmoid_loss_matches_hand_computation():
  logits = jnp.array([[2.0, -1.0, 0.0], [0.5, 3.0, -4.0]])
  labels = jnp.array([0, 2])
  log_sigmoid = lambda z: -math.log1p(math.exp(-z))
  # Row 0: label 0 is the positive; row 1: label 2 is (a badly scored) positive.
  want = -(log_sigmoid(2.0) + log_sigmoid(1.0) + log_sigmoid(-0.0)
           + log_sigmoid(-0.5) + log_sigmoid(-3.0) + log_sigmoid(-4.0)) / 6
  np.testing.assert_allclose(float(pretrain.sigmoid_loss(logits, labels)), want, rtol=1e-6)


def test_siglip_logits_start_at_the_papers_scale_and_bias():
  cfg = vit.ViTConfig(family='siglip', cls_token=False, pool='map', act='gelu_tanh', **TINY)
  params, _ = pretrain.siglip_init(cfg, pretrain.Siglip(embed_dim=8), 5, jax.random.key(0))
  images = jax.random.normal(jax.random.key(1), (3, 28, 28, 3))
  logits = jax.jit(functools.partial(pretrain.siglip_logits, cfg))(params, images)
  assert logits.shape == (3, 5)
  # exp(log 10) * cosine - 10 lies in [-20, 0].
  assert float(logits.min()) >= -20 - 1e-4 and float(logits.max()) <= 1e-4


@needs_data
def test_siglip_lowers_its_loss_on_real_images():
  images, labels = _fashion()
  cfg = vit.ViTConfig(family='siglip', cls_token=False, pool='map', act='gelu_tanh', **TINY)
  hp = pretrain.Siglip(embed_dim=8)
  params, extra = pretrain.siglip_init(cfg, hp, 5, jax.random.key(0))
  tx = pretrain.optimizer(SPEC, 20)
  step = jax.jit(functools.partial(pretrain.siglip_step, cfg, hp, tx, NORM))
  state = pretrain.State(params, tx.init(params), extra)
  losses = []
  for i in range(20):
    state, metrics = step(state, images, labels, jax.random.key(i))
    losses.append(float(metrics['loss']))
  assert np.isfinite(losses).all() and np.mean(losses[-3:]) < 0.8 * losses[0], losses


def test_resized_crop_is_bilinear_and_flip_mirrors():
  image = jax.random.uniform(jax.random.key(0), (28, 28, 3))
  np.testing.assert_allclose(pretrain.resized_crop(image, 0.0, 0.0, 28.0, 28.0, False), image, atol=1e-5)
  np.testing.assert_allclose(pretrain.resized_crop(image, 0.0, 0.0, 28.0, 28.0, True), image[:, ::-1], atol=1e-5)
  # An integer box, upsampled, is a half-pixel-centre bilinear resize of the cropped pixels; only the outer
  # output pixels differ, which blend in the image just outside the box where a crop would clamp.
  want = jax.image.resize(image[4:18, 2:23], (28, 28, 3), 'linear', antialias=False)
  got = pretrain.resized_crop(image, 4.0, 2.0, 14.0, 21.0, False)
  np.testing.assert_allclose(got[1:-1, 1:-1], want[1:-1, 1:-1], atol=1e-5)
  np.testing.assert_allclose(got[0, 1:-1], 0.75 * want[0, 1:-1] + 0.25 * jax.image.resize(
      image[3:4, 2:23], (1, 28, 3), 'linear', antialias=False)[0, 1:-1], atol=1e-5)


def test_crop_boxes_lie_inside_the_image_and_jitter_stays_in_range():
  aug = pretrain.Augment(scale=(0.4, 1.0))
  for k in range(50):
    y0, x0, h, w, _ = (float(v) for v in pretrain.crop_box(aug, jax.random.key(k), 28))
    assert 0 <= y0 and y0 + h <= 28 + 1e-4 and 0 <= x0 and x0 + w <= 28 + 1e-4
    assert 0.4 * 28 * 28 * 0.75 - 1e-3 <= h * w <= 28 * 28 + 1e-3
  flips = [bool(pretrain.crop_box(aug, jax.random.key(k), 28)[-1]) for k in range(50)]
  assert 10 < sum(flips) < 40
  assert not any(bool(pretrain.crop_box(pretrain.Augment(flip=False), jax.random.key(k), 28)[-1]) for k in range(20))
  image = jax.random.uniform(jax.random.key(0), (28, 28, 3))
  jittered = pretrain.jitter(pretrain.Augment(jitter=0.4, jitter_prob=1.0), image, jax.random.key(2))
  assert float(jittered.min()) >= 0 and float(jittered.max()) <= 1 and not np.allclose(jittered, image)
  np.testing.assert_array_equal(pretrain.jitter(pretrain.Augment(jitter=0.4, jitter_prob=0.0), image,
                                                jax.random.key(2)), image)


def test_knn_accuracy():
  train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
  test = np.array([[1.0, 0.05], [0.05, 1.0], [0.2, 1.0]])
  assert pretrain.knn_accuracy(train, np.array([0, 0, 1, 1]), test, np.array([0, 1, 0]), k=2) == pytest.approx(2 / 3)


def test_linear_probe_accuracy_separates_what_is_linearly_separable():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(400, 6))
  # Class = which of three directions scores highest; feature scales differ, as in pretrained features.
  y = np.argmax(x[:, :3] @ np.array([[1.0, 0, -1], [0, 1, 1], [1, -1, 0]]), axis=1)
  x = x * np.array([100.0, 0.01, 1, 1, 1, 1])
  assert pretrain.linear_probe_accuracy(x[:300], y[:300], x[300:], y[300:]) >= 0.95
  assert pretrain.linear_probe_accuracy(x[:300], rng.permutation(y[:300]), x[300:], y[300:]) < 0.6


@pytest.mark.parametrize('family', ['dinov2', 'siglip'])
def test_processor_config_is_the_training_normalisation(family):
  mean, std = pretrain.pixel_stats(np.array([[[[0, 0, 0]], [[255, 255, 255]]]], np.uint8))
  assert mean == [0.5] * 3 and std == [0.5] * 3
  proc = pretrain.processor_config(28, [0.2861] * 3, [0.353] * 3)
  pre = preprocess.for_family(family, 28, proc)
  images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
  ours = pretrain.normalise(pretrain.to_unit(images), [0.2861] * 3, [0.353] * 3)
  np.testing.assert_allclose(pre(images), ours, atol=1e-6)


# ----------------------------------------------------------------------------------------- committed exports

DOCUMENTED = {
    'dino_mini': dict(family='dinov2', depth=8, dim=64, heads=4, mlp_dim=256, patch_size=4, image_size=28,
                      cls_token=True, layer_scale=True, act='gelu', norm_eps=1e-6, pool='cls'),
    'siglip_mini': dict(family='siglip', depth=8, dim=80, heads=4, mlp_dim=320, patch_size=4, image_size=28,
                        cls_token=False, layer_scale=False, act='gelu_tanh', norm_eps=1e-6, pool='map'),
}


committed = pytest.mark.skipif(not (config_lib.MINI_DIR / 'dino_mini').exists(),
                               reason='mini-VFM weights missing: python run.py --config configs/pretrain_mini.py')


@committed
@pytest.mark.parametrize('name', sorted(DOCUMENTED))
def test_committed_exports_load_with_their_documented_config(name):
  bb = load_backbone(config_lib.MINI_DIR / name)
  for field, value in DOCUMENTED[name].items():
    assert getattr(bb.config, field) == value, field
  log = json.loads((config_lib.MINI_DIR / 'pretrain_log.json').read_text())
  mean, std = log['data']['pixel_mean'], log['data']['pixel_std']
  assert bb.processor_config == pretrain.processor_config(28, mean, std)
  images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
  np.testing.assert_allclose(bb.preprocess(images), pretrain.normalise(pretrain.to_unit(images), mean, std), atol=1e-6)
  tokens, pooled = bb.forward(bb.params, bb.preprocess(images))
  assert tokens.shape == (4, 49 + bb.config.num_prefix_tokens, bb.config.dim) and np.isfinite(pooled).all()
  # The recorded sanity check: pretraining beat the random initialisation on the held-out classes.
  accuracy = log['models'][name]['probe']['linear_probe_accuracy']
  assert accuracy[-1] > accuracy[0] + 0.02
  assert (config_lib.MINI_DIR / 'pretrain_log.json').stat().st_size < 100_000


@committed
@pytest.mark.parametrize('name', sorted(DOCUMENTED))
def test_committed_weights_match_transformers_at_every_layer(name):
  """The committed directories are transformers checkpoints: from_pretrained reads them, and our forward
  matches transformers' (eval mode, float32) at every layer boundary and in the pooled output."""
  import torch
  import transformers
  bb = load_backbone(config_lib.MINI_DIR / name)
  arch = json.loads((config_lib.MINI_DIR / name / 'config.json').read_text())['architectures'][0]
  model = getattr(transformers, arch).from_pretrained(config_lib.MINI_DIR / name).eval()
  x = bb.preprocess(np.random.default_rng(1).integers(0, 256, (3, 28, 28, 3), dtype=np.uint8))
  with torch.no_grad():
    ref = model(pixel_values=torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()), output_hidden_states=True)
  rel = lambda ours, theirs: float(np.abs(np.asarray(ours) - theirs.numpy()).max() / np.abs(theirs.numpy()).max())
  tokens = bb.embed(bb.params, x)
  assert rel(tokens, ref.hidden_states[0]) <= 1e-5
  for n in range(bb.config.depth):
    tokens = bb.blocks(bb.params, tokens, n, n + 1)
    assert rel(tokens, ref.hidden_states[n + 1]) <= 1e-5, n
  assert rel(bb.pool(bb.params, bb.final(bb.params, tokens)), ref.pooler_output) <= 1e-5
