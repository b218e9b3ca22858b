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
gives the fraction over the trunk alone. `normalised_gain` is equation 2 (Table 14).
`run` is the accuracy-compute job of configs/vst.py.
"""
import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from stitchjax import distributed, objectives, vit
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


# The accuracy-compute knob: configs/vst.py.
def _tree_config(config):
  """The config's names checked before any compute (each error names its field); pairs derived for the runner."""
  import ml_collections
  from stitchjax import protocol
  names = [config.trunk, *protocol.as_list(config.branches)]
  for field, name in zip(['trunk'] + ['branches'] * (len(names) - 1), names):
    if name not in config.backbones:
      raise ValueError(f'config.{field}: unknown backbone {name!r}; expected one of {sorted(config.backbones)}')
  if len(names) < 2 or len(set(names)) != len(names):
    raise ValueError(f'config.branches={config.branches!r}: needs at least one backbone, none twice, '
                     f'none the trunk {config.trunk!r}')
  if config.stitch_layer not in stitch_lib.STITCH_LAYERS:
    raise ValueError(f'config.stitch_layer={config.stitch_layer!r}: the tree takes one of {stitch_lib.STITCH_LAYERS}')
  if int(config.out_layer) < 0:
    raise ValueError(f'config.out_layer={config.out_layer} must be a block index, or 0 for the penultimate block')
  c = ml_collections.ConfigDict(config.to_dict())
  c.pairs = ','.join(f'{config.trunk}:{b}' for b in names[1:])  # the runner loads and identifies these
  c.methods = 'lp'
  protocol.validate(c)
  return c, names


def _pooled_features(fns: dict, split, preprocess: dict, batch_size: int) -> dict:
  """{variant: forward} -> {variant: (N, sum D)}: each backbone's patch tokens after L_out, mean-pooled, concatenated."""
  from stitchjax import data as data_lib
  names = list(preprocess)
  streams = [data_lib.batches(split, preprocess[n], batch_size, shuffle=False, seed=0) for n in names]
  feats = {key: [] for key in fns}
  for batches in zip(*streams):
    images = {n: b[0] for n, b in zip(names, batches)}
    for key, (fn, cfgs) in fns.items():
      tokens = fn(images)['tokens']
      feats[key].append(np.concatenate([np.asarray(tokens[n][:, c.num_prefix_tokens:].mean(1), np.float32)
                                        for n, c in cfgs.items()], axis=-1))
  return {key: np.concatenate(v) for key, v in feats.items()}


def run(config) -> list[dict]:
  """Full, VST-n and each backbone alone, linear-probed on the tree's pooled output; vst.json and vst.md.

  Each stitch is trained by FFM from the trunk's cached tokens (label-free), each probe by the
  protocol's learning-rate sweep with early stopping on val; every unit resumes (protocol.Runner).
  """
  from stitchjax import protocol
  config, names = _tree_config(config)
  out_layer = int(config.out_layer) or None  # 0: each backbone's penultimate block
  workdir = pathlib.Path(config.workdir)
  with protocol.session(config):
    runner = protocol.Runner(config)
    bbs = {n: runner.backbones[n] for n in names}
    params = {n: bbs[n].params for n in names}
    trees = {}
    for layer in protocol.as_list(config.layers):
      try:
        trees[f'vst_{layer}'] = StitchTree(tuple(names), tuple(bbs[n].config for n in names), int(layer), out_layer,
                                       config.stitch_layer, int(config.lora_rank), mof=False)
      except ValueError as e:  # the tree names its field: layer (config.layers) or out_layer
        raise ValueError(f'config.layers={config.layers!r}, config.out_layer={config.out_layer}: {e}') from e
    base = next(iter(trees.values()))
    # Units are named by everything their result depends on beyond the workdir's identity (protocol.Runner).
    tag = f'vst__{"+".join(names)}__out{"-".join(map(str, base.out_layers))}'
    cached = {names[0]: sorted(t.layer for t in trees.values())} | {b.name: [b.out_layer] for b in base.branches}
    cache = lambda name, split, layer: runner.cache.tokens(
        bbs[name], name, runner.data.splits[split], split, layers=cached[name],
        batch_size=int(config.feature_batch_size))[f'layer_{layer}']
    bs = runner.batch_size('ffm')
    fns = {'full': (functools.partial(full, base, full_params(base, params)), dict(zip(names, base.configs)))}
    for key, tree in trees.items():
      stitches = init_stitches(tree, params[names[0]], jax.random.key(int(config.seed)))
      for b in tree.branches:
        arrays = {s: {'source': cache(names[0], s, tree.layer), 'target': cache(b.name, s, b.out_layer)}
                  for s in ('train', 'val')}
        frozen = {'span': span(params[b.name], tree.layer, b.out_layer)}
        if (block := stitch_lib.frozen_block(b.spec, params[names[0]])) is not None:
          frozen['block'] = block
        trained, _, _ = runner.sweep(f'{tag}__{b.name}__L{tree.layer}__ffm__{tree.stitch_layer}', b.ffm_loss,
                                     objectives.loss_score(b.ffm_loss, bs), {'stitch': stitches[b.name]}, frozen,
                                     arrays['train'], arrays['val'], bs)
        stitches[b.name] = trained['stitch']
      fn = functools.partial(apply, tree, tree_params(tree, params, stitches))
      fns[f'{key}_{tree.stitch_layer}'] = (lambda images, fn=fn: fn(images[names[0]]), dict(zip(names, tree.configs)))
    # Every variant's features come from its jitted inference function, run on the images.
    feats = {s: _pooled_features(fns, runner.data.splits[s], {n: bbs[n].preprocess for n in names},
                                 int(config.feature_batch_size)) for s in ('train', 'val', 'test')}
    edges = np.cumsum([0] + [c.dim for c in base.configs])
    for i, n in enumerate(names):  # each backbone alone is its slice of Full, which runs every backbone alone
      for f in feats.values():
        f[f'alone_{n}'] = f['full'][:, edges[i]:edges[i + 1]]
    blocks = {'full': block_counts(base)['full'], **{f'alone_{n}': s for n, s in zip(names, base.out_layers)},
              **{f'{k}_{t.stitch_layer}': block_counts(t)['vst'] for k, t in trees.items()}}
    rows = []
    labels = runner.labels('test')
    for key, count in blocks.items():
      # Runner.probe standardises by the train split: the backbones' hidden states differ in scale by orders
      # of magnitude, which changes what the probe's optimiser sees, not what it can fit.
      pred, lr, val = runner.probe(f'{tag}__{key}__probe', {s: f[key] for s, f in feats.items()})
      pred = pred['prediction']
      rows.append({'variant': key, 'layer': int(key.split('_')[1]) if key.startswith('vst') else None,
                   'blocks': count, 'extra_compute': count / base.out_layers[0] - 1.0, 'val_accuracy': val,
                   'test_accuracy': float(np.mean(pred == labels)), 'lr': lr, 'n_test': len(labels)})
    acc = {r['variant']: r['test_accuracy'] for r in rows}
    for r in rows:  # equation 2 compares with the trunk alone; another backbone alone is not on that scale
      on_scale = not r['variant'].startswith('alone_') or r['variant'] == f'alone_{names[0]}'
      r['normalised_gain'] = normalised_gain(r['test_accuracy'], acc[f'alone_{names[0]}'], acc['full']) if on_scale else None
    if distributed.is_main():
      _write_tables(workdir, rows, names, config)
  return rows


def _write_tables(workdir: pathlib.Path, rows: list[dict], names: list, config) -> None:
  from stitchjax import atomic
  atomic.write_text(workdir / 'vst.json', json.dumps({'trunk': names[0], 'branches': names[1:], 'rows': rows},
                                                     indent=1))
  pct = lambda v: '–' if v is None else f'{100 * v:.1f}%'
  lines = [f'# VFM Stitch Tree: accuracy against compute (trunk {names[0]}, branches {", ".join(names[1:])})', '',
           'Linear probe (learning rate swept, early stopping on val) on the mean-pooled patch tokens after block '
           'L_out of each backbone the variant runs, concatenated. Stitches trained by FFM at L_out from the '
           "trunk's cached tokens. Extra compute: blocks run beyond the trunk alone (Table 13). Normalised gain: "
           f'equation 2, (acc - acc[alone_{names[0]}]) / (acc[full] - acc[alone_{names[0]}]).', '',
           '| variant | shared blocks n | blocks run | extra compute | val acc | test acc | normalised gain |',
           '|---|---|---|---|---|---|---|']
  lines += [f"| {r['variant']} | {r['layer'] or '–'} | {r['blocks']} | {pct(r['extra_compute'])} "
            f"| {100 * r['val_accuracy']:.1f} | {100 * r['test_accuracy']:.1f} | {pct(r['normalised_gain'])} |"
            for r in sorted(rows, key=lambda r: (r['blocks'], r['variant']))]
  atomic.write_text(workdir / 'vst.md', '\n'.join(lines) + '\n')
  print('\n'.join(lines))
