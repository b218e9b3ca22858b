"""Augmentation on device, seeded by the step: random resized crops, flips and colour jitter of uint8
images, normalised as the exported processor config does.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Augment:
  """Random resized crop (area `scale`, aspect ratio in [3/4, 4/3]) back to size, flip, and
  with probability `jitter_prob` brightness and contrast factors drawn from [1 - jitter, 1 + jitter]."""
  scale: tuple[float, float] = (0.4, 1.0)
  flip: bool = True
  jitter: float = 0.0
  jitter_prob: float = 0.8


def _interpolation_matrix(start, length, size: int, out: int):
  """(out, size) bilinear weights sampling `out` pixels from [start, start + length) of a size-pixel axis.

  Half-pixel centres as torchvision's resize. Taps just outside the box read the image there (as
  RoIAlign does; a crop-then-resize would repeat the box's edge); outside the image they clamp to it.
  """
  coords = start + (jnp.arange(out) + 0.5) * length / out - 0.5
  low = jnp.floor(coords)
  frac = (coords - low)[:, None]
  tap = lambda i: jax.nn.one_hot(jnp.clip(i, 0, size - 1).astype(jnp.int32), size)
  return (1 - frac) * tap(low) + frac * tap(low + 1)


def crop_box(aug: Augment, key, size: int):
  """A random crop (y0, x0, h, w) inside a size x size image and whether to flip it: torchvision's
  RandomResizedCrop draw, with the box clipped to the image instead of redrawn when it does not fit."""
  k_area, k_ratio, k_y, k_x, k_flip = jax.random.split(key, 5)
  area = jax.random.uniform(k_area, minval=aug.scale[0], maxval=aug.scale[1]) * size**2
  ratio = jnp.exp(jax.random.uniform(k_ratio, minval=math.log(3 / 4), maxval=math.log(4 / 3)))
  h = jnp.minimum(jnp.sqrt(area / ratio), size)
  w = jnp.minimum(jnp.sqrt(area * ratio), size)
  y0 = jax.random.uniform(k_y) * (size - h)
  x0 = jax.random.uniform(k_x) * (size - w)
  return y0, x0, h, w, aug.flip & jax.random.bernoulli(k_flip)


def resized_crop(image, y0, x0, h, w, flip, out: int | None = None):
  """image (S, S, C) -> the box [y0, y0 + h) x [x0, x0 + w) bilinearly resized to (out, out, C) (default S),
  mirrored if flip."""
  size = image.shape[0]
  out = out or size
  rows, cols = _interpolation_matrix(y0, h, size, out), _interpolation_matrix(x0, w, size, out)
  cols = jnp.where(flip, cols[::-1], cols)
  # The crop is axis-aligned, so resampling separates into a row and a column matrix.
  return jnp.einsum('iy,yxc,jx->ijc', rows, image, cols)


def jitter(aug: Augment, image, key):
  """With probability aug.jitter_prob, brightness then contrast (blend with the image mean), clipped to [0, 1]."""
  k_apply, k_bright, k_contrast = jax.random.split(key, 3)
  factor = lambda k: jax.random.uniform(k, minval=1 - aug.jitter, maxval=1 + aug.jitter)
  out = jnp.clip(image * factor(k_bright), 0, 1)
  mean = out.mean()
  out = jnp.clip((out - mean) * factor(k_contrast) + mean, 0, 1)
  return jnp.where(jax.random.bernoulli(k_apply, aug.jitter_prob), out, image)


def augment_one(aug: Augment, image, key, size: int | None = None):
  """image: (S, S, C) float in [0, 1] -> an augmented (size, size, C) view (default S)."""
  k_crop, k_jitter = jax.random.split(key)
  out = resized_crop(image, *crop_box(aug, k_crop, image.shape[0]), size)
  return jitter(aug, out, k_jitter) if aug.jitter else out


def to_unit(images_u8):
  """uint8 (B, S, S, 3) -> float32 in [0, 1]."""
  return images_u8.astype(jnp.float32) * jnp.float32(1 / 255)


def normalise(images, mean, std):
  """float [0, 1] (B, S, S, 3) -> model input, as the exported processor config normalises."""
  return (images - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def views(aug: Augment, images_u8, key, mean, std, size: int | None = None):
  """uint8 (B, S, S, 3) -> one normalised augmented view per image, (B, size, size, 3) float32 (default S)."""
  keys = jax.random.split(key, images_u8.shape[0])
  one = functools.partial(augment_one, aug, size=size)
  return normalise(jax.vmap(one)(to_unit(images_u8), keys), mean, std)
