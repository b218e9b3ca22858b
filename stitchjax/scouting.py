"""The stitchability scout: every layer of every pair ranked from cheap measurements, before any training.

    records = scouting.measure(backbones, [('dinov2', 'siglip2'), ...], train, val, task, num_classes)
    scouting.recommend(records, 'ffm_probe', k=3)    # {(source, target): its k best layers}

The paper finds where two VFMs stitch by training a stitch at every candidate layer (Table 1). For a route
(source, target) and every stitch layer n in 1..N-1, the scout instead fits in closed form, on a subsample
of the training split, and scores on the validation split:

- `lfm_error`, `lfm_r2`: a ridge regression from the source's tokens after block n to the target's tokens
  after block n, over the token pairs the stitch layers' alignment makes (stitchjax/stitch_layers.py): the
  closed-form linear stitch of layer feature matching. Relative error ||Ŷ - Y|| / ||Y||, and R² against
  each channel's mean.
- `ffm_error`, `ffm_r2`: that linear stitch run through the target's blocks n..N and final norm (exactly a
  `linear` stitch holding these parameters), against the target's own final tokens.
- `ffm_probe`: the task's head on that stitched model fitted by ridge regression on one-hot targets (on the
  pooled output, standardised like the protocol's probes; for segmentation on the final patch tokens
  against each patch's class fractions, then decoded like the linear decoder); its validation accuracy or
  mIoU at the best of a few ridges.
- `cka`: linear CKA of the same token pairs at n on the training subsample, debiased (the unbiased HSIC
  estimator of Song et al. 2012, as Kornblith et al. 2019 use it), from sums over the tokens' features.

Each backbone runs over the subsample twice (the fits, then the probes' fits) and over the validation split
once, each time as one program that keeps every block's output of a batch (vit.trajectory); each route's
target suffix from every layer is one program (vit.suffix). Sums accumulate in float64 on the host;
nothing is written to disk. docs/scout.md says what each proxy measures and how far to trust it.
"""
import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from stitchjax import backbone as backbone_lib
from stitchjax import distributed, features, segmentation, tasks, vit
from stitchjax import stitch_layers as stitch_lib
from stitchjax.data import batch_indices
from stitchjax.data.splits import permutation
from stitchjax.records import Cell

# Proxy -> whether a higher value predicts the better stitch.
PROXIES = {'lfm_error': False, 'lfm_r2': True, 'ffm_error': False, 'ffm_r2': True, 'ffm_probe': True, 'cka': True}
RANK_BY = 'lfm_r2'  # the proxy the validation found closest to the protocol (docs/scout.md)


@dataclasses.dataclass(frozen=True)
class Images:
  """A split as the scout reads it: `read(indices)` -> uint8 images (B, H, W, 3) or a list of (H, W, 3),
  and their labels: (N,) classes, or (N, L, L) label maps for segmentation."""
  read: Callable
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def subset(self, indices) -> 'Images':
    keep = np.asarray(indices)
    return Images(lambda idx: self.read(keep[idx]), np.asarray(self.labels)[keep])

  def sample(self, count: int, seed: int) -> 'Images':
    """At most `count` examples drawn with `seed`, in their split's order."""
    return self if count >= len(self) else self.subset(np.sort(permutation(len(self), seed, 'scout')[:count]))


@dataclasses.dataclass(frozen=True)
class Route:
  """A (source, target) pair of architectures and what its closed-form stitch needs to know of them."""
  source: vit.ViTConfig
  target: vit.ViTConfig

  @property
  def layers(self) -> range:
    return range(1, min(self.source.depth, self.target.depth))

  @property
  def registers(self) -> int:
    """Target registers that the stitch learns: no source token maps to them (their fit is their mean)."""
    return stitch_lib.num_learned_registers(self.source, self.target)

  def fitted_rows(self) -> np.ndarray:
    """(T_t,) 1 at the target positions a source token maps to, 0 at learned registers."""
    rows = np.ones(self.target.num_tokens, np.float32)
    start = int(self.target.cls_token)
    rows[start:start + self.registers] = 0
    return rows

  def aligned(self, tokens):
    """Source tokens (..., T_s, D_s) -> the target's layout in the source's dim (learned registers zero).
    Alignment commutes with an affine stitch, so a regression on these fits align(x W + b)."""
    lead = tokens.shape[:-2]
    tokens = tokens.reshape(-1, *tokens.shape[-2:]).astype(jnp.float32)
    zeros = jnp.zeros((self.registers, self.source.dim), jnp.float32) if self.registers else None
    out = stitch_lib.align(tokens, self.source, self.target, zeros)
    return out.reshape(*lead, *out.shape[1:])

  def stitch(self, stitch, tokens):
    """The closed-form linear stitch {'kernel', 'bias', 'registers'}: what a 'linear' stitch computes."""
    x = tokens.astype(jnp.float32) @ stitch['kernel'] + stitch['bias']
    return stitch_lib.align(x, self.source, self.target, stitch['registers'] if self.registers else None)


# Pass 1: the fits' sums over token pairs at every layer.

@functools.partial(jax.jit, static_argnums=0)
def _pair_sums(route: Route, source, target, mask, shift: dict) -> dict:
  """source (depth_s, B, T_s, D_s), target (depth_t, B, T_t, D_t) trajectories, mask (B,) -> per layer
  (leading axis) the sums that the ridge fit and CKA read, over the batch's fitted token pairs, shifted by
  `shift` (a first batch's means: sums of centred values lose less to float32)."""
  count = len(route.layers)
  w = (mask[:, None] * route.fitted_rows()[None]).reshape(-1)  # (M,) M = B * T_t
  x = (route.aligned(source[:count]) - shift['x'][:, None, None]).reshape(count, -1, route.source.dim) * w[:, None]
  y = (target[:count].astype(jnp.float32) - shift['y'][:, None, None]).reshape(count, -1, route.target.dim) * w[:, None]
  k, l = jnp.sum(x * x, -1), jnp.sum(y * y, -1)  # the linear kernels' diagonals
  sums = {'n': jnp.sum(w), 'examples': jnp.sum(mask), 'x': x.sum(1), 'y': y.sum(1), 'xx': jnp.einsum('lmd,lme->lde', x, x),
          'xy': jnp.einsum('lmd,lme->lde', x, y), 'yy': jnp.einsum('lmd,lme->lde', y, y),
          'xk': jnp.einsum('lmd,lm->ld', x, k), 'xl': jnp.einsum('lmd,lm->ld', x, l),
          'yk': jnp.einsum('lmd,lm->ld', y, k), 'yl': jnp.einsum('lmd,lm->ld', y, l),
          'kk': jnp.sum(k * k, 1), 'kl': jnp.sum(k * l, 1), 'll': jnp.sum(l * l, 1), 'k': k.sum(1), 'l': l.sum(1)}
  if route.registers:  # a learned register's closed form is the mean of the target's register tokens
    first = int(route.target.cls_token)
    regs = target[:count, :, first:first + route.registers].astype(jnp.float32)
    sums['registers'] = jnp.einsum('lbrd,b->lrd', regs, mask)
  return sums


def ridge(s: dict, strength: float) -> dict:
  """The ridge fit of y on x from one layer's sums: {'kernel' (D_s, D_t), 'bias' (D_t,), 'registers'}, with
  the penalty `strength` times the mean eigenvalue of x's covariance, in float64."""
  n = s['n']
  mx, my = s['x'] / n, s['y'] / n
  cxx = s['xx'] / n - np.outer(mx, mx)
  cxy = s['xy'] / n - np.outer(mx, my)
  penalty = strength * max(np.trace(cxx) / len(cxx), np.finfo(np.float64).tiny)
  kernel = np.linalg.solve(cxx + penalty * np.eye(len(cxx)), cxy)
  bias = (my + s['shift_y']) - (mx + s['shift_x']) @ kernel
  registers = s['registers'] / s['examples'] if 'registers' in s else np.zeros((0, len(my)))
  return {'kernel': kernel.astype(np.float32), 'bias': bias.astype(np.float32), 'registers': registers.astype(np.float32)}


def _hsic(n, trace, one_k, one_l, one_kl):
  """The unbiased HSIC estimator (Song et al. 2012, eq. 5) from its four sums over n samples: tr(K̃L̃),
  1ᵀK̃1, 1ᵀL̃1 and 1ᵀK̃L̃1, where K̃ and L̃ are the kernel matrices with their diagonals zeroed."""
  return (trace + one_k * one_l / ((n - 1) * (n - 2)) - 2 * one_kl / (n - 2)) / (n * (n - 3))


def cka(s: dict) -> float:
  """Debiased linear CKA of x and y from one layer's sums, via K = X Xᵀ and L = Y Yᵀ never formed:
  tr(KL) = ||XᵀY||², 1ᵀK1 = ||Σx||², 1ᵀKL1 = (Σx)ᵀ XᵀY (Σy), with the diagonal terms taken back out."""
  n = s['n']
  def hsic(xy, sx, sy, xl, yk, k, l, kl):
    tr = np.sum(xy * xy) - kl
    one_k, one_l = sx @ sx - k, sy @ sy - l
    one_kl = sx @ xy @ sy - sx @ xl - sy @ yk + kl
    return _hsic(n, tr, one_k, one_l, one_kl)
  xy = hsic(s['xy'], s['x'], s['y'], s['xl'], s['yk'], s['k'], s['l'], s['kl'])
  xx = hsic(s['xx'], s['x'], s['x'], s['xk'], s['xk'], s['k'], s['k'], s['kk'])
  yy = hsic(s['yy'], s['y'], s['y'], s['yl'], s['yl'], s['l'], s['l'], s['ll'])
  return float(xy / np.sqrt(xx * yy))


# Passes 2 and 3: the closed-form stitch through the target's suffix, on the subsample and on val.

def _head_targets(task, labels, mask, grid: int, num_classes: int):
  """What the probe regresses on: one-hot classes (B, C), or each patch's class fractions (B, g*g, C)."""
  if task.name == 'classification':
    return jax.nn.one_hot(labels, num_classes) * mask[:, None]
  onehot = jax.nn.one_hot(labels.astype(jnp.int32) - 1, num_classes)  # ignored pixels (0) are all zeros
  b = onehot.shape[0]
  fractions = jax.image.resize(onehot, (b, grid, grid, num_classes), 'linear', antialias=True)
  return fractions.reshape(b, grid * grid, num_classes)


def _probe_sums(task, h, labels, mask, grid: int, num_classes: int) -> dict:
  """The probe fit's sums of head inputs h and regression targets over a batch's valid rows."""
  y = _head_targets(task, labels, mask, grid, num_classes).reshape(-1, num_classes)
  h = h.reshape(-1, h.shape[-1])
  w = jnp.repeat(mask, h.shape[0] // mask.shape[0])
  return {'n': jnp.sum(w), 'h': w @ h, 'hh': jnp.einsum('md,me,m->de', h, h, w), 'hy': h.T @ y, 'y': y.sum(0)}


def _scores(task, pairs: dict, h, labels, mask, heads) -> dict:
  """A batch's sums for the LFM and FFM residuals ({name: (ours, reference)} tokens) and, per ridge of
  `heads` ({'kernel' (R, D, C), 'bias' (R, C)}), the probe's correct count or its pixel counts."""
  out = {}
  for name, (ours, ref) in pairs.items():
    ref = ref.astype(jnp.float32) * mask[:, None, None]
    d = ours.astype(jnp.float32) * mask[:, None, None] - ref
    out |= {f'{name}_sse': jnp.sum(d * d), f'{name}_ss': jnp.sum(ref * ref), f'{name}_sum': ref.sum((0, 1)),
            f'{name}_rows': jnp.sum(mask) * ref.shape[1]}
  if task.name == 'classification':
    logits = jnp.einsum('bd,rdc->rbc', h, heads['kernel']) + heads['bias'][:, None]
    out['correct'] = jnp.sum((jnp.argmax(logits, -1) == labels) * mask, -1)
  else:
    def counts(head):  # one ridge at a time: a batch of full-resolution logits per ridge would not fit
      c = task.predictions(segmentation.decode(head, h, task.label_size), {'label': labels})
      return jnp.stack([c[k].sum(0) for k in ('intersection', 'pred_area', 'label_area')])
    out['pixels'] = jax.lax.map(counts, heads)
  return out


@functools.partial(jax.jit, static_argnums=0)
def _stitched_tokens(route: Route, stitch: dict, source):
  """Each layer's closed-form stitch of the source's trajectory: (L, B, T_s, D_s) -> (L, B, T_t, D_t)."""
  return jax.vmap(route.stitch)(stitch, source[:len(route.layers)])


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _suffix_sums(cfg: vit.ViTConfig, task, num_classes: int, params, stitched, target, labels, mask, layer, scoring,
                 heads) -> tuple[dict, dict]:
  """The stitched tokens of `layer` (traced: one program for every layer and every source) run through the
  target `cfg` on a batch: (the probe fit's sums, or zeros when `scoring`; the scores' sums, or zeros when
  not). One program for both, so the fits' pass and the scoring pass share its compilation.
  stitched: (L, B, T, D) every layer's stitched tokens; target: (depth, B, T, D) the target's trajectory."""
  tokens = jax.lax.dynamic_index_in_dim(stitched, layer - 1, keepdims=False)
  final = vit.final(cfg, params, vit.suffix(cfg, params, tokens, layer))
  h = vit.pool(cfg, params, final) if task.name == 'classification' else final[:, cfg.num_prefix_tokens:]
  h = h.astype(jnp.float32)
  pairs = {'lfm': (tokens, jax.lax.dynamic_index_in_dim(target, layer - 1, keepdims=False)),
           'ffm': (final, vit.final(cfg, params, target[-1]))}
  fit = lambda: _probe_sums(task, h, labels, mask, cfg.grid, num_classes)
  score = lambda: _scores(task, pairs, h, labels, mask, heads)
  zeros = lambda f: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(f))
  return jax.lax.cond(scoring, lambda: (zeros(fit), score()), lambda: (fit(), zeros(score)))


def probe_heads(s: dict, ridges) -> dict:
  """Ridge fits of the probe's targets on standardised head inputs, one per relative ridge, mapped back
  to raw inputs: {'kernel' (R, D, C), 'bias' (R, C)}. The standardisation is the protocol's
  (tasks.standardised: the fitting data's mean and std + 1e-6)."""
  n = s['n']
  mean, my = s['h'] / n, s['y'] / n
  cov = s['hh'] / n - np.outer(mean, mean)
  sd = np.sqrt(np.maximum(np.diag(cov), 0)) + 1e-6
  gram, cross = cov / np.outer(sd, sd), (s['hy'] / n - np.outer(mean, my)) / sd[:, None]
  values, vectors = np.linalg.eigh(gram)
  scale = max(np.mean(values), np.finfo(np.float64).tiny)
  projected = vectors.T @ cross
  kernels = np.stack([vectors @ (projected / (values + r * scale)[:, None]) / sd[:, None] for r in ridges])
  return {'kernel': kernels.astype(np.float32), 'bias': (my - mean @ kernels).astype(np.float32)}


# The passes.

def measure(backbones: dict, routes: list[tuple[str, str]], train: Images, val: Images, task, num_classes: int, *,
            ridge_strength: float = 1e-4, probe_ridges=(1e-3, 1e-2, 0.1, 1.0, 10.0), batch_size: int = 64) -> list[dict]:
  """The proxies of every route (source name, target name) at each of its layers, as records (Cell fields,
  method 'scout', stitch layer 'linear', metric the proxy, split where it is scored).

  backbones: {name: Backbone} as the task sees them; train: the fits' subsample. It runs on this process's
  default device, as the feature cache's extraction does; with several processes, each computes it whole.
  """
  used = {name: backbones[name] for name in dict.fromkeys(b for route in routes for b in route)}
  shapes = {pair: Route(backbones[pair[0]].config, backbones[pair[1]].config) for pair in routes}

  def passing(desc: str, images: Images):
    """Batches of `images` with every used backbone's trajectory."""
    batches = distributed.progress(_batches(images, used, batch_size), total=-(-len(images) // batch_size),
                                   desc=f'scout: {desc}', unit='batch', leave=False)
    for pixels, labels, mask in batches:
      yield {name: vit.trajectory(bb.config, bb.params, pixels[name]) for name, bb in used.items()}, labels, mask

  # 1. Token-pair sums at every layer -> the closed-form stitches and CKA.
  fits, shifts = {pair: {} for pair in routes}, {}
  for tokens, _, mask in passing('fits', train):
    for pair, route in shapes.items():
      args = (route, tokens[pair[0]], tokens[pair[1]], mask)
      if pair not in shifts:  # the first batch's means
        first = distributed.to_host(_pair_sums(*args, {'x': np.zeros((len(route.layers), route.source.dim)),
                                                       'y': np.zeros((len(route.layers), route.target.dim))}))
        shifts[pair] = {'x': first['x'] / first['n'], 'y': first['y'] / first['n']}
      fits[pair] = _accumulate(fits[pair], _pair_sums(*args, shifts[pair]))
  stitches, records = {}, []
  for (s, t), route in shapes.items():
    per_layer = [{k: v[i] if np.ndim(v) else v for k, v in fits[(s, t)].items()}
                 | {'shift_x': shifts[(s, t)]['x'][i], 'shift_y': shifts[(s, t)]['y'][i]} for i in range(len(route.layers))]
    fitted = [ridge(sums, ridge_strength) for sums in per_layer]
    stitches[(s, t)] = {k: np.stack([f[k] for f in fitted]) for k in fitted[0]}
    records += [_record(s, t, n, 'cka', cka(sums), 'train') for n, sums in zip(route.layers, per_layer)]

  # 2. and 3. The stitched models on the subsample (the probe's sums -> its heads, one per ridge), then on val.
  keys = [(pair, n) for pair, route in shapes.items() for n in route.layers]
  unfitted = {pair: {'kernel': np.zeros((len(probe_ridges), route.target.dim, num_classes), np.float32),
                     'bias': np.zeros((len(probe_ridges), num_classes), np.float32)} for pair, route in shapes.items()}

  def stitched(desc: str, images: Images, scoring: bool, heads: dict) -> dict:
    totals = {key: {} for key in keys}
    for tokens, labels, mask in passing(desc, images):
      outs = {}
      for pair, route in shapes.items():
        target = used[pair[1]]
        stitched = _stitched_tokens(route, stitches[pair], tokens[pair[0]])
        outs |= {(pair, n): _suffix_sums(target.config, task, num_classes, target.params, stitched, tokens[pair[1]],
                                         labels, mask, n, scoring, heads.get((pair, n), unfitted[pair]))[int(scoring)]
                 for n in route.layers}
      totals = {key: _accumulate(totals[key], out) for key, out in outs.items()}
    return totals
  heads = {key: probe_heads(sums, probe_ridges) for key, sums in stitched('probe fits', train, False, {}).items()}
  for ((s, t), n), sc in stitched('validation', val, True, heads).items():
    for name in ('lfm', 'ffm'):
      sse, ss, total, rows = (sc[f'{name}_{k}'] for k in ('sse', 'ss', 'sum', 'rows'))
      records += [_record(s, t, n, f'{name}_error', np.sqrt(sse / ss), 'val'),
                  _record(s, t, n, f'{name}_r2', 1 - sse / (ss - total @ total / rows), 'val')]
    if task.name == 'classification':
      values = sc['correct'] / len(val)
    else:
      values = [segmentation.miou(dict(zip(('intersection', 'pred_area', 'label_area'), c[:, None])))['miou']
                for c in sc['pixels']]
    best = int(np.argmax(values))
    records.append(_record(s, t, n, 'ffm_probe', values[best], 'val', ridge=probe_ridges[best]))
  return records


def _batches(images: Images, backbones: dict, batch_size: int):
  """(pixels {name: (B, S, S, 3)}, labels, mask (B,)) over `images` in order, padded to batch_size."""
  for idx in batch_indices(len(images), batch_size, seed=None):
    raw, mask = images.read(idx), np.zeros(batch_size, np.float32)
    mask[:len(idx)] = 1
    pixels = {name: features.pad(bb.preprocess(raw), batch_size) for name, bb in backbones.items()}
    yield pixels, features.pad(np.asarray(images.labels[idx]), batch_size), mask


def _accumulate(total: dict, sums: dict) -> dict:
  """`total` plus a batch's sums, in float64 on the host."""
  return {k: total.get(k, 0) + np.asarray(v, np.float64) for k, v in distributed.to_host(sums).items()}


def _record(source: str, target: str, layer: int, proxy: str, value, split: str, **extra) -> dict:
  return Cell(source, target, layer, 'scout', 'linear').record(split, proxy, float(value), **extra)


def recommend(records, rank_by: str = RANK_BY, k: int = 3, routes=None) -> dict:
  """{(source, target): layers} for `routes` (default: every route in records): a pair's k best by `rank_by`,
  best first (ties to the shallower layer); a self-stitch's, every layer where a pair of its backbone is
  stitched, so that each stitch has its baselines (its own proxies cannot rank it: its closed form is the
  identity), or its own k best where no pair has its backbone."""
  if rank_by not in PROXIES:
    raise ValueError(f'rank_by={rank_by!r} is not one of {sorted(PROXIES)}')
  sign = 1 if PROXIES[rank_by] else -1
  values = {}
  for r in records:
    if r['metric'] == rank_by:
      values.setdefault((r['source'], r['target']), []).append((-sign * r['value'], r['layer']))
  routes = list(values) if routes is None else list(routes)
  missing = [f'{s}->{t}' for s, t in routes if (s, t) not in values]
  if missing:
    raise ValueError(f'no {rank_by} proxies for {", ".join(missing)}: run the scout with these pairs')
  best = {route: [layer for _, layer in sorted(values[route])[:k]] for route in routes}
  out = {}
  for s, t in routes:
    pairs = [layer for (a, b) in routes if a != b and s in (a, b) for layer in best[(a, b)]]
    out[(s, t)] = best[(s, t)] if s != t or not pairs else sorted(set(pairs))
  return out


def scout(source, target, data: dict, val: dict | None = None, *, num_classes: int | None = None,
          task='classification', label_size: int | None = None, subsample: int = 2000, rank_by: str = RANK_BY,
          k: int = 3, ridge_strength: float = 1e-4, probe_ridges=(1e-3, 1e-2, 0.1, 1.0, 10.0), batch_size: int = 64,
          seed: int = 0) -> dict:
  """Ranks every stitch layer of source→target, target→source and both self-stitches (stitchjax.scout).

  source, target: Backbones, or anything load_backbone accepts. data, val: {'image': uint8 (N,H,W,3) or a
  list of (H,W,3), 'label': (N,) classes, or (N, label_size, label_size) annotations for
  task='segmentation'} as stitchjax.fit takes them; without val, a seeded fifth of data is held out for
  scoring. The fits use at most `subsample` images of data.
  Returns {'records': one per (route, layer, proxy), 'recommended': {(source, target): its k best layers}},
  routes named 'source' and 'target'.
  """
  task = tasks.make(task, label_size) if isinstance(task, str) else task
  backbones = {name: task.backbone(b if isinstance(b, backbone_lib.Backbone) else backbone_lib.load_backbone(b))
               for name, b in (('source', source), ('target', target))}
  fit = _images(data, task, 'data')
  if val is None:
    order, cut = permutation(len(fit), seed, 'scout val'), len(fit) // 5
    if cut < 1:
      raise ValueError(f'data has {len(fit)} images: too few to hold out a validation fifth; pass val')
    held, fit = fit.subset(np.sort(order[:cut])), fit.subset(np.sort(order[cut:]))
  else:
    held = _images(val, task, 'val')
  classes = num_classes or int(np.max(fit.labels)) + (task.name == 'classification')
  records = measure(backbones, [('source', 'target'), ('target', 'source'), ('source', 'source'), ('target', 'target')],
                    fit.sample(subsample, seed), held, task, classes, ridge_strength=ridge_strength,
                    probe_ridges=tuple(probe_ridges), batch_size=batch_size)
  return {'records': records, 'recommended': recommend(records, rank_by, k)}


def _images(data: dict, task, name: str) -> Images:
  """{'image', 'label'} as Images, with the labels the task needs checked."""
  if 'image' not in data or 'label' not in data:
    raise ValueError(f"{name} must hold 'image' and 'label' (keys: {sorted(data)})")
  images, labels = data['image'], np.asarray(data['label'])
  want = task.label_shape(len(images))
  if labels.shape != want:
    raise ValueError(f"{name}['label'] has shape {labels.shape}, expected {want} for {task.name}")
  return Images(lambda idx: [images[i] for i in idx], labels.astype(task.label_dtype))
