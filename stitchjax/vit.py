"""One Vision Transformer for DINOv2, DINOv3, CLIP and SigLIP/SigLIP2 (paper §3.1), and for AIMv2,
InternViT, EVA-02 and Perception Encoder as timm defines them.

The families differ in `ViTConfig` fields, not in code. Block
parameters are stacked on a leading layer axis, so "the first n blocks of the
source" is `params['blocks']` sliced to `[0:n]` and run by `lax.scan`:

    tokens = embed(cfg, params, images)              # == HF hidden_states[0]
    tokens = blocks(cfg, params, tokens, 0, n)       # == HF hidden_states[n]
    tokens = blocks(cfg, params, tokens, n, depth)   # == HF hidden_states[depth]
    pooled = pool(cfg, params, final(cfg, params, tokens))

Every function is pure in `params`; `cfg` is a static, hashable dataclass.
Token order is `[CLS?, registers..., patches...]`.
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from stitchjax import rope

ACTIVATIONS = {
    'gelu': functools.partial(jax.nn.gelu, approximate=False),
    'gelu_tanh': functools.partial(jax.nn.gelu, approximate=True),
    'quick_gelu': lambda x: x * jax.nn.sigmoid(1.702 * x),
    'silu': jax.nn.silu,
    'relu': jax.nn.relu,
}
POOLS = ('cls', 'map', 'avg', 'none')
POS_EMBEDS = ('learned', 'learned_patches', 'rope')
ROPES = ('none', 'eva', 'pe')
NORMS = ('layer', 'rms')
MLPS = ('mlp', 'gated')
DTYPES = ('float32', 'bfloat16')
# Fields added after workdirs, feature caches and exports existed, with the values that keep earlier models
# as they were; `ViTConfig.key` leaves them out at these values.
LATER_FIELDS = {'norm': 'layer', 'embed_norm': False, 'final_norm': True, 'rope': 'none', 'rope_ref_grid': 0,
                'attn_norm': False, 'mlp_norm': False, 'pool_heads': 0, 'qk_norm': False}


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Everything that distinguishes one ViT family or size from another."""
  family: str  # 'dinov2' | 'dinov3' | 'clip' | 'siglip': provenance, no behaviour hangs on it.
  depth: int
  dim: int
  heads: int
  mlp_dim: int
  patch_size: int
  image_size: int
  cls_token: bool = True
  num_registers: int = 0
  # 'learned' covers [CLS?, patches]; 'learned_patches' the patches only (timm's no_embed_class: the
  # prefix tokens get none); 'rope' is DINOv3's 2-D RoPE.
  pos_embed: str = 'learned'
  rope_theta: float = 100.0
  # RoPE beside learned positions: 'eva' is EVA-02's (timm's RotaryEmbeddingCat: index coordinates rescaled to
  # a rope_ref_grid x rope_ref_grid grid, interleaved pairs); 'pe' is Perception Encoder's (the same from
  # coordinates 1..g, x before y); DINOv3's is pos_embed='rope'.
  rope: str = 'none'
  rope_ref_grid: int = 0
  pre_norm: bool = False  # CLIP's pre_layrnorm after the embedding.
  layer_scale: bool = False
  qk_norm: bool = False  # a norm on each head's queries and keys, before any RoPE
  attn_norm: bool = False  # a norm on the attention output before its projection (EVA-02's sub-LN)
  mlp: str = 'mlp'  # 'mlp': fc2(act(fc1 x)); 'gated': fc2(act(gate x) * up x) (SwiGLU).
  mlp_norm: bool = False  # a norm on the MLP's hidden layer before fc2 (EVA-02)
  act: str = 'gelu'
  qkv_bias: tuple[bool, bool, bool] = (True, True, True)  # DINOv3 masks the key bias: (True, False, True).
  proj_bias: bool = True
  mlp_bias: bool = True
  patch_bias: bool = True
  norm: str = 'layer'  # every norm of the model: 'layer' (LayerNorm) or 'rms' (RMSNorm, AIMv2)
  norm_eps: float = 1e-6
  embed_norm: bool = False  # a norm on the patch projections, before the positions (AIMv2)
  final_norm: bool = True  # False: the last block's tokens are the final tokens (InternViT)
  # 'cls': the CLS token; 'map': SigLIP's attention-pooling head; 'avg': the mean of the patch tokens; 'none'.
  pool: str = 'cls'
  pool_heads: int = 0  # the MAP head's attention heads; 0: as many as the blocks' (PE's has its own)
  dtype: str = 'float32'  # compute dtype; parameters stay float32.
  remat: bool = False

  def __post_init__(self):
    object.__setattr__(self, 'qkv_bias', tuple(bool(b) for b in self.qkv_bias))
    checks = [
        (self.act in ACTIVATIONS, f'act={self.act!r} is not one of {sorted(ACTIVATIONS)}'),
        (self.pool in POOLS, f'pool={self.pool!r} is not one of {POOLS}'),
        (self.pos_embed in POS_EMBEDS, f'pos_embed={self.pos_embed!r} is not one of {POS_EMBEDS}'),
        (self.norm in NORMS, f'norm={self.norm!r} is not one of {NORMS}'),
        (self.rope in ROPES, f'rope={self.rope!r} is not one of {ROPES}'),
        (self.rope == 'none' or self.pos_embed != 'rope', f"rope={self.rope!r} and pos_embed='rope' are two RoPEs"),
        (self.pool_heads == 0 or self.dim % self.pool_heads == 0, f'dim={self.dim} is not divisible by pool_heads'),
        (self.mlp in MLPS, f'mlp={self.mlp!r} is not one of {MLPS}'),
        (self.dtype in DTYPES, f'dtype={self.dtype!r} is not one of {DTYPES}'),
        (min(self.depth, self.dim, self.heads, self.mlp_dim, self.patch_size, self.image_size) > 0,
         'depth, dim, heads, mlp_dim, patch_size and image_size must be positive'),
        (self.dim % self.heads == 0, f'dim={self.dim} is not divisible by heads={self.heads}'),
        # Like the references' strided patch conv, a remainder of less than a patch is dropped.
        (self.image_size >= self.patch_size, f'image_size={self.image_size} is smaller than patch_size={self.patch_size}'),
        (not self.uses_rope or (self.dim // self.heads) % 4 == 0,
         f'2-D RoPE needs a head dim divisible by 4, got {self.dim // self.heads}'),
        (self.pool != 'cls' or self.cls_token, "pool='cls' needs cls_token=True"),
    ]
    for ok, message in checks:
      if not ok:
        raise ValueError(f'ViTConfig: {message}')

  @property
  def uses_rope(self) -> bool:
    return self.pos_embed == 'rope' or self.rope != 'none'

  @property
  def head_dim(self) -> int:
    return self.dim // self.heads

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid**2

  @property
  def num_prefix_tokens(self) -> int:
    return int(self.cls_token) + self.num_registers

  @property
  def num_pos_prefix(self) -> int:
    """Learned position rows before the patch grid's (the CLS token's, under 'learned')."""
    return int(self.cls_token) if self.pos_embed == 'learned' else 0

  @property
  def num_tokens(self) -> int:
    return self.num_prefix_tokens + self.num_patches

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def key(self) -> dict:
    """to_dict without the LATER_FIELDS at their defaults: what workdir identities and feature-cache keys
    record, so that those written before the fields existed still match."""
    return {k: v for k, v in self.to_dict().items() if k not in LATER_FIELDS or v != LATER_FIELDS[k]}

  @classmethod
  def from_dict(cls, d: dict) -> 'ViTConfig':
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f'ViTConfig: unknown fields {unknown}')
    return cls(**d)


def _norm(cfg: ViTConfig, name: str):
  if cfg.norm == 'rms':
    return nn.RMSNorm(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, name=name)
  # Two-pass variance, as torch computes it: the fast E[x²]-E[x]² form loses ~1e-5 of precision.
  return nn.LayerNorm(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, use_fast_variance=False, name=name)


def _dense(cfg: ViTConfig, features: int, use_bias: bool, name: str):
  return nn.Dense(features, use_bias=use_bias, dtype=cfg.compute_dtype, name=name)


class Embed(nn.Module):
  """Patchify, CLS token, learned positions, registers and CLIP's pre-norm: (B,H,W,3) -> (B,T,D)."""
  cfg: ViTConfig

  @nn.compact
  def __call__(self, images):
    cfg = self.cfg
    p = cfg.patch_size
    x = nn.Conv(cfg.dim, (p, p), strides=(p, p), padding='VALID', use_bias=cfg.patch_bias,
                dtype=cfg.compute_dtype, name='patch')(images)
    x = x.reshape(x.shape[0], -1, cfg.dim)
    if cfg.embed_norm:
      x = _norm(cfg, 'patch_norm')(x)
    init = nn.initializers.truncated_normal(0.02)
    if cfg.pos_embed == 'learned_patches':
      x = x + self.param('pos', init, (x.shape[1], cfg.dim)).astype(x.dtype)
    if cfg.cls_token:
      cls = self.param('cls', init, (cfg.dim,))
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, cfg.dim)), x], axis=1)
    if cfg.pos_embed == 'learned':
      x = x + self.param('pos', init, (x.shape[1], cfg.dim)).astype(x.dtype)
    if cfg.num_registers:
      registers = self.param('registers', init, (cfg.num_registers, cfg.dim)).astype(x.dtype)
      registers = jnp.broadcast_to(registers, (x.shape[0], *registers.shape))
      n = int(cfg.cls_token)
      x = jnp.concatenate([x[:, :n], registers, x[:, n:]], axis=1)
    if cfg.pre_norm:
      x = _norm(cfg, 'pre_norm')(x)
    return x


def attention(q, k, v):
  """softmax(q kᵀ / √head_dim) v: q (B,Tq,N,H), k and v (B,Tk,N,H).

  jax.nn.dot_product_attention lowers to XLA on every device unless asked. On GPUs in
  bfloat16/float16 this asks for cuDNN flash attention, which keeps no (Tq, Tk) scores. On
  CPUs it runs a few heads at a time: one call over all heads writes the whole
  (B, N, Tq, Tk) score tensor (25 MB at ViT-B, batch 8) and reads it back from memory,
  where a chunk's scores stay in cache (BENCHMARKS.md). The chunks are static slices of
  the heads axis, so a batch sharded over a mesh stays sharded as it is.
  """
  backend = jax.default_backend()
  if backend == 'gpu' and q.dtype in (jnp.bfloat16, jnp.float16):
    return jax.nn.dot_product_attention(q, k, v, implementation='cudnn')
  heads = q.shape[2]
  chunk = cpu_head_chunk(q.shape, k.shape) if backend == 'cpu' else heads
  if chunk >= heads:
    return jax.nn.dot_product_attention(q, k, v)
  return jnp.concatenate([jax.nn.dot_product_attention(q[:, :, i:i + chunk], k[:, :, i:i + chunk], v[:, :, i:i + chunk])
                          for i in range(0, heads, chunk)], axis=2)


CPU_SCORE_BYTES = 2 << 20  # a chunk's float32 scores: about one core's L2


def cpu_head_chunk(q_shape, k_shape) -> int:
  """Heads per attention call on CPUs: as many as keep the chunk's (B, heads, Tq, Tk) scores in CPU_SCORE_BYTES."""
  return max(1, CPU_SCORE_BYTES // (q_shape[0] * q_shape[1] * k_shape[1] * 4))


class Attention(nn.Module):
  """Multi-head attention through jax.nn.dot_product_attention (see `attention`)."""
  cfg: ViTConfig

  @nn.compact
  def __call__(self, x, kv=None):
    cfg = self.cfg
    kv = x if kv is None else kv
    q_bias, k_bias, v_bias = cfg.qkv_bias
    split = lambda t: t.reshape(*t.shape[:-1], cfg.heads, cfg.head_dim)
    q = split(_dense(cfg, cfg.dim, q_bias, 'q')(x))
    k = split(_dense(cfg, cfg.dim, k_bias, 'k')(kv))
    v = split(_dense(cfg, cfg.dim, v_bias, 'v')(kv))
    if cfg.qk_norm:
      q, k = _norm(cfg, 'q_norm')(q), _norm(cfg, 'k_norm')(k)
    if cfg.uses_rope:
      cos, sin = rope.tables(cfg)
      q = rope.apply(q, cos, sin, cfg.num_prefix_tokens, interleaved=cfg.rope != 'none')
      k = rope.apply(k, cos, sin, cfg.num_prefix_tokens, interleaved=cfg.rope != 'none')
    out = attention(q, k, v)
    out = out.reshape(*out.shape[:-2], cfg.dim)
    if cfg.attn_norm:
      out = _norm(cfg, 'norm')(out)
    return _dense(cfg, cfg.dim, cfg.proj_bias, 'o')(out)


class MLP(nn.Module):
  cfg: ViTConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    act = ACTIVATIONS[cfg.act]
    if cfg.mlp == 'gated':
      h = act(_dense(cfg, cfg.mlp_dim, cfg.mlp_bias, 'gate')(x)) * _dense(cfg, cfg.mlp_dim, cfg.mlp_bias, 'up')(x)
    else:
      h = act(_dense(cfg, cfg.mlp_dim, cfg.mlp_bias, 'fc1')(x))
    if cfg.mlp_norm:
      h = _norm(cfg, 'norm')(h)
    return _dense(cfg, cfg.dim, cfg.mlp_bias, 'fc2')(h)


class Block(nn.Module):
  """Pre-norm transformer block with optional layer scale: (B,T,D) -> (B,T,D)."""
  cfg: ViTConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    ones = nn.initializers.ones
    y = Attention(cfg, name='attn')(_norm(cfg, 'norm1')(x))
    if cfg.layer_scale:
      y = y * self.param('ls1', ones, (cfg.dim,)).astype(y.dtype)
    x = x + y
    y = MLP(cfg, name='mlp')(_norm(cfg, 'norm2')(x))
    if cfg.layer_scale:
      y = y * self.param('ls2', ones, (cfg.dim,)).astype(y.dtype)
    return x + y


class MAPHead(nn.Module):
  """SigLIP's multihead attention pooling: a learned probe attends to all tokens: (B,T,D) -> (B,D)."""
  cfg: ViTConfig

  @nn.compact
  def __call__(self, x):
    # torch.nn.MultiheadAttention always has biases, and the head's MLP is never gated.
    cfg = dataclasses.replace(self.cfg, qkv_bias=(True, True, True), proj_bias=True, mlp='mlp', mlp_bias=True,
                              pos_embed='learned', rope='none', qk_norm=False, attn_norm=False, mlp_norm=False,
                              heads=self.cfg.pool_heads or self.cfg.heads)
    probe = self.param('probe', nn.initializers.xavier_uniform(), (1, cfg.dim)).astype(x.dtype)
    y = Attention(cfg, name='attn')(jnp.broadcast_to(probe, (x.shape[0], 1, cfg.dim)), kv=x)
    y = y + MLP(cfg, name='mlp')(_norm(cfg, 'norm')(y))
    return y[:, 0]


class ViT(nn.Module):
  """The uninterrupted model: embed, all blocks (scanned), final norm, pool.

  Its parameter tree is the one every function here takes: `embed`, `blocks`
  (each leaf with a leading `depth` axis), `norm` (unless final_norm=False), and `head` for MAP pooling.
  """
  cfg: ViTConfig

  @nn.compact
  def __call__(self, images):
    cfg = self.cfg
    x = Embed(cfg, name='embed')(images.astype(cfg.compute_dtype))
    block = nn.remat(Block) if cfg.remat else Block
    body = lambda module, carry, _: (module(carry), None)
    x, _ = nn.scan(body, variable_axes={'params': 0}, split_rngs={'params': True},
                   length=cfg.depth)(block(cfg, name='blocks'), x, None)
    if cfg.final_norm:
      x = _norm(cfg, 'norm')(x)
    if cfg.pool == 'map':
      return x, MAPHead(cfg, name='head')(x)
    return x, None if cfg.pool == 'none' else _pooled(cfg, x)


@functools.partial(jax.jit, static_argnums=0)  # one program, not one compilation per op of flax's init
def init_params(cfg: ViTConfig, rng) -> dict:
  images = jnp.zeros((1, cfg.image_size, cfg.image_size, 3), jnp.float32)
  return ViT(cfg).init(rng, images)['params']


def check_images(cfg: ViTConfig, images) -> None:
  want = (cfg.image_size, cfg.image_size, 3)
  if images.ndim != 4 or tuple(images.shape[1:]) != want:
    raise ValueError(f'images must have shape (B, {", ".join(map(str, want))}) for this {cfg.family} backbone '
                     f'(image_size={cfg.image_size}), got {tuple(images.shape)}')


@functools.partial(jax.jit, static_argnums=0)
def embed(cfg: ViTConfig, params, images):
  """images: (B,H,W,3) float32, already normalised -> tokens (B,T,D)."""
  check_images(cfg, images)
  return Embed(cfg).apply({'params': params['embed']}, images.astype(cfg.compute_dtype))


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def blocks(cfg: ViTConfig, params, tokens, start: int, stop: int):
  """Runs blocks [start, stop) on tokens (B,T,D); start == stop is the identity."""
  if not 0 <= start <= stop <= cfg.depth:
    raise ValueError(f'block span [{start}, {stop}) is outside [0, {cfg.depth}] for this {cfg.family} backbone')
  span = jax.tree.map(lambda p: p[start:stop], params['blocks'])
  step = lambda x, p: (Block(cfg).apply({'params': p}, x), None)
  if cfg.remat:
    step = jax.checkpoint(step)
  return jax.lax.scan(step, tokens.astype(cfg.compute_dtype), span)[0]


@functools.partial(jax.jit, static_argnums=0)
def trajectory(cfg: ViTConfig, params, images):
  """Every block's output in one pass: images (B,H,W,3) -> (depth, B, T, D), [i] the tokens after block i+1."""
  def step(x, p):
    x = Block(cfg).apply({'params': p}, x)
    return x, x
  return jax.lax.scan(step, embed(cfg, params, images), params['blocks'])[1]


@functools.partial(jax.jit, static_argnums=0)
def suffix(cfg: ViTConfig, params, tokens, start):
  """Blocks [start, depth) on tokens (B,T,D) with `start` traced: one program for every start, where
  `blocks` compiles one per span. Each block runs under a cond, so the blocks before `start` cost nothing."""
  def step(x, block):
    p, i = block
    return jax.lax.cond(i >= start, lambda x: Block(cfg).apply({'params': p}, x), lambda x: x, x), None
  return jax.lax.scan(step, tokens.astype(cfg.compute_dtype), (params['blocks'], jnp.arange(cfg.depth)))[0]


@functools.partial(jax.jit, static_argnums=0)
def final(cfg: ViTConfig, params, tokens):
  """The model's final norm on all tokens (CLIP: post_layernorm); the tokens as they are without one."""
  if not cfg.final_norm:
    return tokens
  return _norm(cfg, None).apply({'params': params['norm']}, tokens)


def _pooled(cfg: ViTConfig, final_tokens):
  if cfg.pool == 'cls':
    return final_tokens[:, 0]
  return final_tokens[:, cfg.num_prefix_tokens:].mean(axis=1)  # 'avg', over the patches as timm pools


@functools.partial(jax.jit, static_argnums=0)
def pool(cfg: ViTConfig, params, final_tokens):
  """final tokens (B,T,D) -> (B,D): the CLS token, the MAP head or the patches' mean, as the reference pools."""
  if cfg.pool == 'map':
    return MAPHead(cfg).apply({'params': params['head']}, final_tokens.astype(cfg.compute_dtype))
  if cfg.pool != 'none':
    return _pooled(cfg, final_tokens)
  raise ValueError(f'this {cfg.family} backbone has no pooler (pool="none", e.g. SigLIP without its head)')


def forward(cfg: ViTConfig, params, images):
  """The uninterrupted model, the one full forward everyone runs: (final tokens (B,T,D), pooled (B,D) or None)."""
  tokens = final(cfg, params, blocks(cfg, params, embed(cfg, params, images), 0, cfg.depth))
  return tokens, (None if cfg.pool == 'none' else pool(cfg, params, tokens))
