"""SigLIP: the sigmoid loss of SigLIP (Zhai et al. 2023, "Sigmoid Loss for Language
Image Pre-Training", arXiv:2303.15343) with learned label embeddings in place of a
text tower: z_i = normalise(W pool(x_i)), z_k = normalise(e_k),

    logit_ik = exp(t') z_i . z_k + b,   y_ik = +1 if image i has label k else -1,
    loss     = -mean_ik log sigmoid(y_ik logit_ik),

t' initialised to log 10 and b to -10, as in the paper. (SigLIP sums over the
labels and averages over images; the mean here only rescales by 1/K.)
"""
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from stitchjax import vit
from stitchjax.pretrain.augment import Augment, views
from stitchjax.pretrain.training import State


@dataclasses.dataclass(frozen=True)
class Siglip:
  embed_dim: int = 64
  temperature_init: float = math.log(10)  # t' (the logit scale is exp(t'))
  bias_init: float = -10.0
  augment: Augment = Augment(scale=(0.7, 1.0))


def siglip_init(cfg: vit.ViTConfig, hp: Siglip, num_labels: int, key) -> tuple[dict, dict]:
  k_vit, k_proj, k_labels = jax.random.split(key, 3)
  params = {'vit': vit.init_params(cfg, k_vit),
            'head': {'proj': nn.initializers.lecun_normal()(k_proj, (cfg.dim, hp.embed_dim)),
                     'labels': jax.random.normal(k_labels, (num_labels, hp.embed_dim)),
                     'temperature': jnp.asarray(hp.temperature_init, jnp.float32),
                     'bias': jnp.asarray(hp.bias_init, jnp.float32)}}
  return params, {}


def _unit(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def siglip_logits(cfg: vit.ViTConfig, params, images):
  """Normalised images (B, S, S, 3) -> image-label logits (B, K)."""
  head = params['head']
  z_img = _unit(vit.forward(cfg, params['vit'], images)[1] @ head['proj'])
  return jnp.exp(head['temperature']) * z_img @ _unit(head['labels']).T + head['bias']


def sigmoid_loss(logits, labels):
  """-mean log sigmoid(y * logits) with y = +1 at (i, labels[i]) and -1 elsewhere; logits (B, K), labels (B,)."""
  signs = 2 * jax.nn.one_hot(labels, logits.shape[-1]) - 1
  return -jnp.mean(jax.nn.log_sigmoid(signs * logits))


def siglip_step(cfg: vit.ViTConfig, hp: Siglip, tx, norm, state: State, images_u8, labels, key):
  """One SigLIP step on uint8 images (B, S, S, 3) and labels (B,); returns (state, metrics)."""
  def loss_fn(params):
    logits = siglip_logits(cfg, params, views(hp.augment, images_u8, key, *norm))
    return sigmoid_loss(logits, labels), logits
  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {'loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == labels),
             'temperature': jnp.exp(params['head']['temperature']), 'bias': params['head']['bias']}
  return State(params, opt_state, state.extra), metrics
