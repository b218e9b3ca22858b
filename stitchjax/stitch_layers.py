"""Stitch layers and the stitched model (paper §3.1, §5.3).

    stitched(x) = tgt.pool(tgt.final(tgt.blocks(align(S(src.blocks(src.embed(x), 0, n))), n, N)))

A stitch layer S maps the source's token sequence at layer n, (B, T_s, D_s), to
target-dimension tokens; `align` then gives them the target's token layout:

- patch tokens map 1:1; when the patch grids differ, the grid of S's outputs is
  resampled bilinearly (antialiased when shrinking) to the target's;
- the target CLS token is S(source CLS), or S's mean over the patch tokens when the
  source has no CLS (SigLIP);
- target registers are S(source registers) when the source has exactly as many,
  otherwise learned vectors (one per target register) trained with the stitch.

Stitch layers: 'linear'; 'mlp' (Linear-ReLU-Linear, hidden width = target dim, the
LLaVA-1.5 projector); 'lora' (the source's block n+1, frozen, with trainable LoRA on
its attention and MLP kernels, then a linear projection when the dims differ).
Backbone parameters are always arguments: gradients never reach them.
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from stitchjax import vit

STITCH_LAYERS = ('linear', 'mlp', 'lora')


@dataclasses.dataclass(frozen=True)
class StitchSpec:
  """Everything static about one stitch: which layer kind joins which token layouts."""
  kind: str
  source: vit.ViTConfig
  target: vit.ViTConfig
  layer: int  # n: the source runs blocks [0, n), the target blocks [n, depth)
  lora_rank: int = 8
  dtype: str = 'float32'

  def __post_init__(self):
    if self.kind not in STITCH_LAYERS:
      raise ValueError(f'stitch_layer={self.kind!r} is not one of {STITCH_LAYERS}')
    for name, cfg in (('source', self.source), ('target', self.target)):
      if not 1 <= self.layer <= cfg.depth - 1:
        raise ValueError(f'layer={self.layer} is outside 1..{cfg.depth - 1} for the {name} ({cfg.family}, depth '
                         f'{cfg.depth})')
    if self.kind == 'lora' and self.lora_rank < 1:
      raise ValueError(f'lora_rank={self.lora_rank} must be positive')

  @property
  def learned_registers(self) -> int:
    return num_learned_registers(self.source, self.target)


def num_learned_registers(source: vit.ViTConfig, target: vit.ViTConfig) -> int:
  """The target registers a stitch learns: all of them, unless the source has exactly as many to map."""
  t, s = target.num_registers, source.num_registers
  return t if t and t != s else 0


class LoRABlock(nn.Module):
  """Low-rank updates for every kernel of one frozen ViT block: W + A @ B (B starts at zero)."""
  cfg: vit.ViTConfig
  rank: int

  @nn.compact
  def __call__(self, tokens, frozen_block):
    kernels = {path: leaf for path, leaf in jax.tree_util.tree_flatten_with_path(frozen_block)[0]
               if path[-1].key == 'kernel'}
    deltas = {}
    for path, kernel in kernels.items():
      name = '_'.join(p.key for p in path[:-1])
      a = self.param(f'{name}_a', nn.initializers.normal(1.0 / self.rank), (kernel.shape[0], self.rank))
      b = self.param(f'{name}_b', nn.initializers.zeros, (self.rank, kernel.shape[1]))
      deltas[path] = a @ b
    merged = jax.tree_util.tree_map_with_path(lambda p, leaf: leaf + deltas[p] if p in deltas else leaf, frozen_block)
    return vit.Block(self.cfg).apply({'params': merged}, tokens)


class Stitch(nn.Module):
  """S followed by the token alignment: source tokens (B, T_s, D_s) -> target tokens (B, T_t, D_t)."""
  spec: StitchSpec

  @nn.compact
  def __call__(self, tokens, frozen_block=None):
    spec, dt = self.spec, jnp.dtype(self.spec.dtype)
    d = spec.target.dim
    tokens = tokens.astype(dt)
    if spec.kind == 'linear':
      y = nn.Dense(d, dtype=dt, name='linear')(tokens)
    elif spec.kind == 'mlp':
      y = nn.Dense(d, dtype=dt, name='fc2')(nn.relu(nn.Dense(d, dtype=dt, name='fc1')(tokens)))
    else:
      if frozen_block is None:
        raise ValueError("stitch_layer='lora' needs the source's block n+1 as frozen_block")
      lora_cfg = dataclasses.replace(spec.source, dtype=spec.dtype, remat=False)
      y = LoRABlock(lora_cfg, spec.lora_rank, name='lora')(tokens, frozen_block)
      if spec.source.dim != d:
        y = nn.Dense(d, dtype=dt, name='proj')(y)
    registers = None
    if spec.learned_registers:
      registers = self.param('registers', nn.initializers.normal(0.02), (spec.learned_registers, d)).astype(dt)
    return align(y, spec.source, spec.target, registers)


def resample_patches(patches, grid: int):
  """(B, g*g, D) patch tokens -> (B, grid*grid, D): bilinear, antialiased when shrinking."""
  b, n, d = patches.shape
  g = int(round(n**0.5))
  if g == grid:
    return patches
  image = patches.reshape(b, g, g, d)
  return jax.image.resize(image, (b, grid, grid, d), 'bilinear', antialias=True).reshape(b, grid * grid, d)


def align(tokens, source: vit.ViTConfig, target: vit.ViTConfig, learned_registers=None):
  """Source-layout tokens (already in the target dim) -> the target's [CLS?, registers..., patches...]."""
  s_cls = int(source.cls_token)
  patches = tokens[:, source.num_prefix_tokens:]
  out = []
  if target.cls_token:
    out.append(tokens[:, :1] if source.cls_token else patches.mean(axis=1, keepdims=True))
  if target.num_registers:
    if learned_registers is None:
      out.append(tokens[:, s_cls:s_cls + source.num_registers])
    else:
      # Added to zeros shaped like the batch, not broadcast: under a data-parallel mesh the result then
      # shares the tokens' batch sharding, which concatenation needs.
      out.append(jnp.zeros_like(tokens[:, :1, :1]) + learned_registers)
  out.append(resample_patches(patches, target.grid))
  return jnp.concatenate(out, axis=1)


@functools.partial(jax.jit, static_argnums=0)
def init(spec: StitchSpec, rng, frozen_block=None) -> dict:
  """One compiled initialiser per spec: flax's eager init would compile each of its small ops."""
  tokens = jnp.zeros((1, spec.source.num_tokens, spec.source.dim), jnp.float32)
  return Stitch(spec).init(rng, tokens, frozen_block)['params']


def apply(spec: StitchSpec, params, tokens, frozen_block=None):
  return Stitch(spec).apply({'params': params}, tokens, frozen_block)


def frozen_block(spec: StitchSpec, source_params):
  """The source's block n+1 (index n) that a LoRA stitch adapts; None for the other stitch layers."""
  if spec.kind != 'lora':
    return None
  return jax.tree.map(lambda p: p[spec.layer], source_params['blocks'])
