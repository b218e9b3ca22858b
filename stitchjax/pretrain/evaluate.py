"""Evaluation on classes the models never see: a linear probe and k-NN on pooled features, and how
often SigLIP-mini names its own pretraining labels.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stitchjax import tasks, vit
from stitchjax.pretrain.augment import normalise, to_unit
from stitchjax.pretrain.siglip import siglip_logits


def features(cfg: vit.ViTConfig, params, images_u8: np.ndarray, norm, batch_size: int = 500) -> np.ndarray:
  """Pooled features (N, D) of un-augmented uint8 images (N, S, S, 3)."""
  return np.concatenate([np.asarray(_pooled_images(cfg, params, images_u8[i:i + batch_size], norm))
                         for i in range(0, len(images_u8), batch_size)])


@functools.partial(jax.jit, static_argnums=0)
def _pooled_images(cfg: vit.ViTConfig, params, images_u8, norm):
  return vit.forward(cfg, params, normalise(to_unit(images_u8), *norm))[1]


def knn_accuracy(train_x, train_y, test_x, test_y, k: int = 20, temperature: float = 0.07) -> float:
  """Weighted k-NN on cosine similarity (as DINO evaluates): each of the k neighbours votes exp(sim / T)."""
  train_x, test_x = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in (train_x, test_x))
  sims = test_x @ train_x.T
  nearest = np.argsort(-sims, axis=1, kind='stable')[:, :k]
  votes = np.zeros((len(test_x), int(train_y.max()) + 1))
  np.add.at(votes, (np.arange(len(test_x))[:, None], train_y[nearest]),
            np.exp(np.take_along_axis(sims, nearest, 1) / temperature))
  return float(np.mean(votes.argmax(1) == test_y))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _fit_linear(x, y, num_classes: int, steps: int):
  """Softmax regression (D, K) weights and (K,) bias: full batch, zero init, Adam 0.01, L2 1e-4 on weights."""
  def loss(params):
    logits = x @ params['w'] + params['b']
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + 1e-4 * jnp.sum(params['w']**2)
  tx = optax.adam(0.01)
  params = {'w': jnp.zeros((x.shape[1], num_classes)), 'b': jnp.zeros((num_classes,))}

  def step(_, carry):
    params, opt_state = carry
    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state)
    return optax.apply_updates(params, updates), opt_state
  return jax.lax.fori_loop(0, steps, step, (params, tx.init(params)))[0]


def linear_probe_accuracy(train_x, train_y, test_x, test_y, steps: int = 1000) -> float:
  """Test accuracy of softmax regression on features standardised by the train statistics.

  Deterministic and, at these sizes (~1000 examples, D <= 100), trained to convergence, so
  features are compared rather than optimisers. Standardising matters: pretrained features
  can concentrate in a few large directions that cosine k-NN over-weights.
  """
  x = tasks.standardised({'train': train_x, 'test': test_x})
  params = _fit_linear(jnp.asarray(x['train']), jnp.asarray(train_y), int(train_y.max()) + 1, steps)
  logits = x['test'] @ np.asarray(params['w']) + np.asarray(params['b'])
  return float(np.mean(logits.argmax(1) == test_y))


def probe(cfg: vit.ViTConfig, params, held_out: dict, norm) -> dict:
  """held_out: {'train', 'test'} -> uint8 'images', int 'labels' -> linear-probe and k-NN test accuracies."""
  x = {s: features(cfg, params, held_out[s]['images'], norm) for s in ('train', 'test')}
  y = {s: held_out[s]['labels'] for s in ('train', 'test')}
  return {'linear_probe_accuracy': round(linear_probe_accuracy(x['train'], y['train'], x['test'], y['test']), 4),
          'knn_accuracy': round(knn_accuracy(x['train'], y['train'], x['test'], y['test']), 4)}


def label_accuracy(cfg: vit.ViTConfig, params, images_u8: np.ndarray, labels: np.ndarray, norm) -> float:
  """SigLIP: how often an image's nearest label embedding is its own label (images it was not trained on)."""
  logits = np.concatenate([np.asarray(_siglip_logits_images(cfg, params, images_u8[i:i + 500], norm))
                           for i in range(0, len(images_u8), 500)])
  return round(float(np.mean(logits.argmax(1) == labels)), 4)


@functools.partial(jax.jit, static_argnums=0)
def _siglip_logits_images(cfg: vit.ViTConfig, params, images_u8, norm):
  return siglip_logits(cfg, params, normalise(to_unit(images_u8), *norm))
