"""The VFM Stitch Tree (VST): k backbones sharing one trunk's early blocks (paper §6.2, appendix B.5-B.6).

    trunk:    embed -> blocks [0, n) ──┬── blocks [n, L_out)                    -> trunk tokens
                                       ├── S_1 -> backbone 1 blocks [n, L_out)  -> branch 1 tokens
                                       └── S_2 -> backbone 2 blocks [n, L_out)  -> branch 2 tokens

One backbone (the trunk) runs blocks [0, n) once; each branch is a stitch layer S_i
(stitch_layers.py, trained label-free with FFM at L_out) followed by another backbone's blocks
[n, L_out). L_out defaults to each backbone's penultimate block, the layer an MLLM reads
(hidden_states[-2], layer 23 of 24). "Full" runs every backbone alone on its own images.

    tree = StitchTree(('clip', 'dinov2'), (clip_cfg, dino_cfg), layer=14)
    params = tree_params(tree, {'clip': clip.params, 'dinov2': dino.params}, stitches)
    out = apply(tree, params, clip.preprocess(images))
    out['tokens']['dinov2']   # (B, T, D) after block L_out of the DINOv2 branch
    out['mof']                # (B, k * P, D): the interleaved mixture of features an MLLM projector reads

The MoF (Tong et al., "Eyes Wide Shut", as in the paper's MoF-LLaVA) keeps only patch
tokens, as LLaVA does, brings every backbone's grid to the trunk's (bilinear), and
interleaves them token by token: [t_0 of backbone 0, t_0 of backbone 1, ..., t_1 of
backbone 0, ...]. It needs one width; with different widths set `mof=False` and
interleave after per-backbone projectors.

Compute (Table 13 of the supplementary): the trunk alone runs L_out blocks, Full runs
the sum of every backbone's L_out, VST-n runs L_out + sum_i (L_out_i - n); `extra_compute`
gives the fraction over the trunk alone. `normalised_gain` is equation 2 (Table 14). The accuracy-compute job of configs/vst.py is
stitchjax/jobs/vst.py.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp

from stitchjax import objectives, vit
from stitchjax import model as model_lib
from stitchjax import stitch_layers as stitch_lib


@dataclasses.dataclass(frozen=True)
class Branch:
  """A stitch from the trunk's tokens after block n into one backbone, then that backbone's blocks [n, L_out)."""
  name: str
  spec: stitch_lib.StitchSpec  # source: the trunk; target: this backbone; layer: n
  out_layer: int

  def tokens(self, stitch_params, span_params, shared, trunk_block=None):
    """shared: trunk tokens after block n (B, T_trunk, D_trunk) -> this backbone's tokens after block L_out.

    span_params: the backbone's blocks [n, L_out) only (see `tree_params`).
    trunk_block: the trunk's block n+1, which a 'lora' stitch adapts.
    """
    x = model_lib.Stitched(self.spec).at_stitch({'stitch': stitch_params}, {'block': trunk_block}, shared)
    return vit.blocks(self.spec.target, span_params, x, 0, self.out_layer - self.spec.layer)

  def ffm_loss(self, trainable, frozen, batch):
    """FFM for the tree, label-free: MSE between the stitched branch and the backbone's own tokens after L_out.

    batch: 'source' (B, T_trunk, D_trunk) trunk tokens after block n, 'target' (B, T, D) this
    backbone's tokens after block L_out (both from the feature cache), 'mask' (B,).
    frozen: {'span': blocks [n, L_out) of this backbone, 'block': the trunk's block n+1 (lora only)}.
    """
    y = self.tokens(trainable['stitch'], frozen['span'], batch['source'], frozen.get('block'))
    return objectives.masked_mean(objectives.sq_dist(y, batch['target']), batch['mask'])


@dataclasses.dataclass(frozen=True)
class StitchTree:
  """The static structure of a VST: which backbones, where they split, what comes out."""
  names: tuple[str, ...]  # names[0] is the trunk, the others are branches
  configs: tuple[vit.ViTConfig, ...]
  layer: int  # n: the trunk's blocks [0, n) are shared by every branch
  out_layer: int | None = None  # L_out: tokens after this block go out; None: each backbone's depth - 1
  stitch_layer: str = 'mlp'
  lora_rank: int = 8
  mof: bool = True  # also return the interleaved MoF (needs one width)

  def __post_init__(self):
    object.__setattr__(self, 'names', tuple(self.names))
    object.__setattr__(self, 'configs', tuple(self.configs))
    if len(self.names) != len(self.configs):
      raise ValueError(f'StitchTree: {len(self.names)} names for {len(self.configs)} configs')
    if len(self.names) < 2:
      raise ValueError(f'StitchTree: names={self.names} needs a trunk and at least one branch')
    if len(set(self.names)) != len(self.names):
      raise ValueError(f'StitchTree: names={self.names} repeats a backbone')
    for name, cfg, stop in zip(self.names, self.configs, self.out_layers):
      if not 2 <= stop <= cfg.depth:
        raise ValueError(f'out_layer={stop} is outside 2..{cfg.depth} for backbone {name!r} (depth {cfg.depth})')
    low = min(self.out_layers)
    if not 1 <= self.layer <= low - 1:
      raise ValueError(f'layer={self.layer} is outside 1..{low - 1} (out_layer {low}): every branch must keep '
                       'at least one block of its own')
    if self.stitch_layer not in stitch_lib.STITCH_LAYERS:
      raise ValueError(f'stitch_layer={self.stitch_layer!r} is not one of {stitch_lib.STITCH_LAYERS}')
    dims = {n: c.dim for n, c in zip(self.names, self.configs)}
    if self.mof and len(set(dims.values())) > 1:
      raise ValueError(f'mof=True needs one width, but the backbones have dims {dims}; set mof=False and '
                       'interleave the tokens after per-backbone projectors (tree.interleave)')

  @property
  def out_layers(self) -> tuple[int, ...]:
    return tuple(c.depth - 1 if self.out_layer is None else self.out_layer for c in self.configs)

  @property
  def branches(self) -> tuple[Branch, ...]:
    trunk = self.configs[0]
    return tuple(Branch(name, stitch_lib.StitchSpec(self.stitch_layer, trunk, cfg, self.layer, self.lora_rank,
                                                    trunk.dtype), stop)
                 for name, cfg, stop in zip(self.names[1:], self.configs[1:], self.out_layers[1:]))


# Parameters: only what runs.
def span(params, start: int, stop: int, embed: bool = False) -> dict:
  """A backbone's blocks [start, stop) (and its embedding): a tree never holds the blocks it skips."""
  out = {'blocks': jax.tree.map(lambda p: p[start:stop], params['blocks'])}
  return out | {'embed': params['embed']} if embed else out


def _check_names(tree: StitchTree, given: dict, what: str) -> None:
  missing = [n for n in tree.names[1 if what == 'stitches' else 0:] if n not in given]
  if missing:
    raise ValueError(f'{what}: no parameters for {missing}; the tree has {list(tree.names)}')


def tree_params(tree: StitchTree, backbones: dict, stitches: dict) -> dict:
  """Full backbone params {name: ...} and stitch params {branch: ...} -> what `apply` takes.

  'shared': the trunk's embedding and blocks [0, n); 'backbones': every backbone's blocks
  [n, L_out), the trunk's own included; 'stitches': one per branch. A branch backbone's
  first n blocks are never loaded, and no span is sliced inside `apply`: XLA would copy it.
  """
  _check_names(tree, backbones, 'backbones')
  _check_names(tree, stitches, 'stitches')
  n = tree.layer
  return {'shared': span(backbones[tree.names[0]], 0, n, embed=True),
          'backbones': {name: span(backbones[name], n, stop) for name, stop in zip(tree.names, tree.out_layers)},
          'stitches': {b.name: stitches[b.name] for b in tree.branches}}


def full_params(tree: StitchTree, backbones: dict) -> dict:
  """What `full` takes: every backbone's embedding and blocks [0, L_out)."""
  _check_names(tree, backbones, 'backbones')
  return {'backbones': {n: span(backbones[n], 0, stop, embed=True) for n, stop in zip(tree.names, tree.out_layers)}}


def init_stitches(tree: StitchTree, trunk_params, rng) -> dict:
  """Freshly initialised stitch params {branch: ...}; trunk_params: the trunk's full params (a 'lora' stitch adapts block n+1)."""
  keys = jax.random.split(rng, len(tree.branches))
  return {b.name: stitch_lib.init(b.spec, k, stitch_lib.frozen_block(b.spec, trunk_params))
          for b, k in zip(tree.branches, keys)}


# Inference.
def interleave(patch_tokens) -> jax.Array:
  """[(B, P, D)] * k -> (B, k * P, D): patch 0 of every backbone, then patch 1, ... (interleaved MoF)."""
  b, p, d = patch_tokens[0].shape
  return jnp.stack(patch_tokens, axis=2).reshape(b, len(patch_tokens) * p, d)


def _outputs(tree: StitchTree, tokens: dict) -> dict:
  out = {'tokens': tokens}
  if tree.mof:
    grid = tree.configs[0].grid
    patches = [stitch_lib.resample_patches(tokens[n][:, c.num_prefix_tokens:], grid)
               for n, c in zip(tree.names, tree.configs)]
    out['mof'] = interleave([p.astype(tokens[tree.names[0]].dtype) for p in patches])
  return out


@functools.partial(jax.jit, static_argnums=0)
def apply(tree: StitchTree, params, images) -> dict:
  """The VST. images: (B, S, S, 3) preprocessed for the trunk; params from `tree_params`.

  Returns {'tokens': {name: (B, T, D) after block L_out}, 'mof': (B, k * P, D) when tree.mof}.
  """
  trunk_cfg, trunk = tree.configs[0], tree.names[0]
  shared = vit.blocks(trunk_cfg, params['shared'], vit.embed(trunk_cfg, params['shared'], images), 0, tree.layer)
  own = params['backbones'][trunk]
  tokens = {trunk: vit.blocks(trunk_cfg, own, shared, 0, tree.out_layers[0] - tree.layer)}
  # A LoRA stitch adapts the trunk's block n+1: the first of the trunk's own span.
  block = jax.tree.map(lambda p: p[0], own['blocks']) if tree.stitch_layer == 'lora' else None
  for b in tree.branches:
    tokens[b.name] = b.tokens(params['stitches'][b.name], params['backbones'][b.name], shared, block)
  return _outputs(tree, tokens)


@functools.partial(jax.jit, static_argnums=0)
def full(tree: StitchTree, params, images: dict) -> dict:
  """The baseline: every backbone alone on its own images {name: (B, S, S, 3)}; params from `full_params`."""
  tokens = {}
  for name, cfg, stop in zip(tree.names, tree.configs, tree.out_layers):
    p = params['backbones'][name]
    tokens[name] = vit.blocks(cfg, p, vit.embed(cfg, p, images[name]), 0, stop)
  return _outputs(tree, tokens)


# Compute accounting (supplementary B.5.1, Table 13) and equation 2 (B.6, Table 14).
def block_counts(tree: StitchTree) -> dict[str, int]:
  """Transformer blocks run per image: the trunk alone ('single'), every backbone alone ('full'), the tree ('vst')."""
  single = tree.out_layers[0]
  return {'single': single, 'full': sum(tree.out_layers),
          'vst': single + sum(b.out_layer - tree.layer for b in tree.branches)}


def extra_compute(tree: StitchTree) -> dict[str, float]:
  """Table 13: blocks run beyond the trunk alone, as a fraction of it, for Full and for this VST-n."""
  c = block_counts(tree)
  return {k: (c[k] - c['single']) / c['single'] for k in ('full', 'vst')}


def normalised_gain(vst: float, single: float, full: float) -> float | None:
  """Equation 2: (Perf_VST - Perf_single) / (Perf_Full - Perf_single); None when Full gains nothing."""
  return None if full == single else (vst - single) / (full - single)
