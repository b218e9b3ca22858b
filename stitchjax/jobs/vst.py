"""Job 'vst': the VFM Stitch Tree's accuracy against compute (stitchjax/tree.py, configs/vst.py).

Full, VST-n at every configured n, and each backbone alone, linear-probed on the pooled output;
writes vst.json and vst.md.
"""
import functools
import json
import pathlib

import jax
import numpy as np

from stitchjax import atomic, cells, distributed, objectives, protocol, records, workdir
from stitchjax import tree as tree_lib
from stitchjax import data as data_lib
from stitchjax import stitch_layers as stitch_lib


def _names(config) -> list[str]:
  """The trunk and branches, checked with the rest of the config before any compute (errors name the field)."""
  names = [config.trunk, *cells.as_list(config.branches)]
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
  cells.validate(config)
  return names


def _pooled_features(fns: dict, split, preprocess: dict, batch_size: int) -> dict:
  """{variant: forward} -> {variant: (N, sum D)}: each backbone's patch tokens after L_out, mean-pooled, concatenated."""
  names = list(preprocess)
  streams = [data_lib.batches(split, preprocess[n], batch_size, seed=None) for n in names]
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
  protocol's learning-rate sweep with early stopping on val; every unit resumes (protocol.Runner, built
  for the trunk and branches).
  """
  names = _names(config)
  out_layer = int(config.out_layer) or None  # 0: each backbone's penultimate block
  root = pathlib.Path(config.workdir)
  with workdir.session(config):
    runner = protocol.runner(config, names)
    bbs = {n: runner.backbones[n] for n in names}
    params = {n: bbs[n].params for n in names}
    trees = {}
    for layer in cells.as_list(config.layers):
      try:
        trees[f'vst_{layer}'] = tree_lib.StitchTree(tuple(names), tuple(bbs[n].config for n in names), int(layer),
                                                    out_layer, config.stitch_layer, int(config.lora_rank), mof=False)
      except ValueError as e:  # the tree names its field: layer (config.layers) or out_layer
        raise ValueError(f'config.layers={config.layers!r}, config.out_layer={config.out_layer}: {e}') from e
    base = next(iter(trees.values()))
    # Units are named by everything their result depends on beyond the workdir's identity (protocol.Runner).
    tag = f'vst__{"+".join(names)}__out{"-".join(map(str, base.out_layers))}'
    cached = {names[0]: sorted(t.layer for t in trees.values())} | {b.name: [b.out_layer] for b in base.branches}
    cache = lambda name, split, layer: runner.cache.tokens(
        bbs[name], name, runner.data.splits[split], split, layers=cached[name],
        batch_size=int(config.feature_batch_size))[f'layer_{layer}']
    bs = runner.settings.batch_size('ffm')
    fns = {'full': (functools.partial(tree_lib.full, base, tree_lib.full_params(base, params)),
                    dict(zip(names, base.configs)))}
    for key, tree in trees.items():
      stitches = tree_lib.init_stitches(tree, params[names[0]], jax.random.key(int(config.seed)))
      for b in tree.branches:
        arrays = {s: {'source': cache(names[0], s, tree.layer), 'target': cache(b.name, s, b.out_layer)}
                  for s in ('train', 'val')}
        frozen = {'span': tree_lib.span(params[b.name], tree.layer, b.out_layer)}
        if (block := stitch_lib.frozen_block(b.spec, params[names[0]])) is not None:
          frozen['block'] = block
        trained, _, _ = runner.sweep(f'{tag}__{b.name}__L{tree.layer}__ffm__{tree.stitch_layer}', b.ffm_loss,
                                     objectives.loss_score(b.ffm_loss, bs), {'stitch': stitches[b.name]}, frozen,
                                     arrays['train'], arrays['val'], bs)
        stitches[b.name] = trained['stitch']
      fn = functools.partial(tree_lib.apply, tree, tree_lib.tree_params(tree, params, stitches))
      fns[f'{key}_{tree.stitch_layer}'] = (lambda images, fn=fn: fn(images[names[0]]), dict(zip(names, tree.configs)))
    # Every variant's features come from its jitted inference function, run on the images.
    feats = {s: _pooled_features(fns, runner.data.splits[s], {n: bbs[n].preprocess for n in names},
                                 int(config.feature_batch_size)) for s in ('train', 'val', 'test')}
    edges = np.cumsum([0] + [c.dim for c in base.configs])
    for i, n in enumerate(names):  # each backbone alone is its slice of Full, which runs every backbone alone
      for f in feats.values():
        f[f'alone_{n}'] = f['full'][:, edges[i]:edges[i + 1]]
    blocks = {'full': tree_lib.block_counts(base)['full'], **{f'alone_{n}': s for n, s in zip(names, base.out_layers)},
              **{f'{k}_{t.stitch_layer}': tree_lib.block_counts(t)['vst'] for k, t in trees.items()}}
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
      gain = tree_lib.normalised_gain(r['test_accuracy'], acc[f'alone_{names[0]}'], acc['full'])
      r['normalised_gain'] = gain if on_scale else None
    if distributed.is_main():
      _write_tables(root, rows, names)
  return rows


def _write_tables(root: pathlib.Path, rows: list[dict], names: list) -> None:
  atomic.write_text(root / 'vst.json', json.dumps({'trunk': names[0], 'branches': names[1:], 'rows': rows},
                                                     indent=1))
  pct = lambda v: '–' if v is None else f'{100 * v:.1f}%'
  intro = [f'# VFM Stitch Tree: accuracy against compute (trunk {names[0]}, branches {", ".join(names[1:])})', '',
           'Linear probe (learning rate swept, early stopping on val) on the mean-pooled patch tokens after block '
           'L_out of each backbone the variant runs, concatenated. Stitches trained by FFM at L_out from the '
           "trunk's cached tokens. Extra compute: blocks run beyond the trunk alone (Table 13). Normalised gain: "
           f'equation 2, (acc - acc[alone_{names[0]}]) / (acc[full] - acc[alone_{names[0]}]).', '']
  table = records.table(
      ['variant', 'shared blocks n', 'blocks run', 'extra compute', 'val acc', 'test acc', 'normalised gain'],
      [[r['variant'], r['layer'] or '–', r['blocks'], pct(r['extra_compute']), f"{100 * r['val_accuracy']:.1f}",
        f"{100 * r['test_accuracy']:.1f}", pct(r['normalised_gain'])]
       for r in sorted(rows, key=lambda r: (r['blocks'], r['variant']))])
  text = '\n'.join(intro) + '\n' + table
  atomic.write_text(root / 'vst.md', text)
  print(text, end='')
