"""The paper's stitching protocol as resumable cells (paper §3-5, appendix A.2).

A config expands into cells (stitchjax/cells.py), one per (source, target, layer, method, stitch
layer). Each training stage sweeps the learning rates (stitchjax/sweep.py), trains each with AdamW
and early stopping on the validation split, and keeps the one with the best validation score;
each (stage, learning rate) is a unit with its own checkpoints and a `done.json`, so a re-run
continues where it stopped and never recomputes a finished unit. Everything trains from the
feature cache: no backbone forward runs in training except the target suffix after the stitch.

The task (stitchjax/tasks.py) decides what the head is and how it is scored: a linear head on
pooled features and accuracy, or for `config.task='segmentation'` (paper §5.1, Table 2's ADE20K
column) a linear decoder on the final patch tokens and mIoU. The cells are the same.

    runner = protocol.runner(config)    # loads the data and backbones, checks the workdir
    records = runner.run(cell)          # or protocol.run(config): every cell, results.json
"""
import dataclasses
from functools import partial
import json
import pathlib
import warnings

import jax
import jax.numpy as jnp

from stitchjax import data as data_lib
from stitchjax import distributed, export, features, metrics, objectives, tasks, train, workdir
from stitchjax.backbone import Backbone, configured_processor_backend, load_backbone
from stitchjax.cells import all_layers, as_list, expand, pairs, validate
from stitchjax.model import stitch as stitch_model
from stitchjax.records import FIELDS, Cell
from stitchjax.sweep import Sweep


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the cells are run with beyond the data, the backbones and the sweep."""
  layers: tuple[int, ...] | None  # every route's stitch layers; None until the scout has chosen them (layers='scout:K')
  batch_sizes: dict  # method -> training batch size, with a 'default'
  eval_batch_size: int  # validation and test passes need no gradients: larger batches
  feature_batch_size: int
  seed: int
  lora_rank: int
  dtype: str
  remat: bool  # the target suffix recomputes its activations in the backward pass instead of keeping them
  export: tuple[str, ...]  # the methods whose stitched models are exported

  @classmethod
  def from_config(cls, config) -> 'Settings':
    sizes = dict(config.train.batch_size)
    return cls(all_layers(config), sizes, int(config.get('eval_batch_size') or sizes['default']),
               int(config.feature_batch_size), int(config.seed), int(config.lora_rank), config.dtype,
               bool(config.get('remat', False)), tuple(as_list(config.get('export', ''))))

  def batch_size(self, method: str) -> int:
    return int(self.batch_sizes.get(method, self.batch_sizes['default']))


class Runner:
  """Runs cells against one dataset and a set of loaded backbones, sharing the feature cache.

  backbones: {name: Backbone} as the task sees them; paths: {name: (path, image_size)} as configured,
  which exports record.
  """

  def __init__(self, root: pathlib.Path, data: data_lib.Dataset, backbones: dict[str, Backbone], paths: dict,
               task, cache: features.Cache, lr_sweep: Sweep, settings: Settings, skipped: dict | None = None):
    self.workdir, self.data, self.backbones, self.paths = pathlib.Path(root), data, backbones, paths
    self.task, self.cache, self.lr_sweep, self.settings = task, cache, lr_sweep, settings
    self.skipped = skipped or {}  # {split: unreadable images dropped} (load_data)
    self.placement = lr_sweep.placement
    self.num_classes = len(data.classes)

  def identity(self, config) -> dict:
    """What this workdir's results depend on (workdir.check_identity)."""
    c = config
    return {'classes': self.data.classes, 'splits': {name: s.fingerprint for name, s in self.data.splits.items()},
            'backbones': {name: workdir.backbone_identity(bb, self.cache.backbone_digest(bb))
                          for name, bb in self.backbones.items()},
            'train': c.train.to_dict(), 'dtype': c.dtype, 'seed': c.seed, 'lora_rank': c.lora_rank,
            **self.task.identity()}

  def feats(self, name: str, split: str) -> dict:
    if self.settings.layers is None:
      raise RuntimeError("config.layers='scout:K': run the scout before the protocol (jobs/stitch.py does)")
    bb = self.backbones[name]
    return self.cache.tokens(bb, name, self.data.splits[split], split, layers=self.settings.layers, final=True,
                             pooled=bb.config.pool != 'none', batch_size=self.settings.feature_batch_size)

  def labels(self, split: str):
    """Classification: int32 (N,); segmentation: uint8 (N, L, L) annotations at the task's label_size."""
    return self.task.labels(self.data.splits[split], self.cache)

  def sweep(self, unit: str, loss_fn, score_fn, init, frozen, train_arrays, val_arrays, batch_size) -> tuple:
    """The learning-rate sweep of one training stage, in cells/<unit>: (params, lr, val score)."""
    return self.lr_sweep(self.workdir / 'cells' / unit, unit, loss_fn, score_fn, init, frozen, train_arrays,
                          val_arrays, batch_size)

  def probe(self, unit: str, feats: dict) -> tuple[dict, float, float]:
    """The task's probe of fixed features {split: (N, D)} (segmentation: patch tokens (N, g*g, D)):
    (test predictions {name: (N, ...)}, lr, val score)."""
    task, eval_bs, put = self.task, self.settings.eval_batch_size, self.placement.batch
    feats = task.probe_inputs(feats)
    arrays = {s: {'features': feats[s], 'label': self.labels(s)} for s in ('train', 'val', 'test')}
    init = {'head': tasks.head_init(feats['train'].shape[-1], self.num_classes)}
    score = objectives.task_score(task, task.probe_predictions, eval_bs, put)
    params, lr, val = self.sweep(unit, task.probe_loss, score, init, {}, arrays['train'], arrays['val'],
                                 self.settings.batch_size('lp'))
    return objectives.evaluate(task.probe_predictions, params, {}, arrays['test'], eval_bs, put), lr, val

  # Cells.
  def run(self, cell: Cell) -> list[dict]:
    """A cell's records; a non-finite loss stops the cell, is recorded, and the sweep goes on."""
    out_path = self.workdir / 'cells' / cell.id / 'result.json'
    if distributed.agree(out_path.exists()):
      return json.loads(out_path.read_text())
    method = {'lp': self.lp, 'lfm': self.lfm, 'ffm': self.ffm, 'tlt': self.tlt, 'ffm_tlt': self.ffm_tlt}[cell.method]
    try:
      records = method(cell)
    except FloatingPointError as e:
      warnings.warn(f'cell {cell.id} failed: {e}')
      records = [cell.record('test', 'failed', 0.0) | {'value': None, 'error': str(e)}]
    workdir.write_json(out_path, records)
    return records

  def lp(self, cell: Cell) -> list[dict]:
    """A probe of the source alone."""
    entries = {s: self.feats(cell.source, s) for s in ('train', 'val', 'test')}
    pred, lr, val = self.probe(cell.id, self.task.probe_features(entries, self.backbones[cell.source].config))
    self._save_predictions(cell, pred)
    return self._test_records(cell, pred, val, lr=lr)

  def lfm(self, cell: Cell) -> list[dict]:
    """The stitch matched at the stitch point, then probed."""
    return self._matching(cell, objectives.lfm_loss)

  def ffm(self, cell: Cell) -> list[dict]:
    """The stitch matched on the target's final tokens, then probed."""
    return self._matching(cell, objectives.ffm_loss)

  def tlt(self, cell: Cell) -> list[dict]:
    """Stitch and head trained with the task's loss, from a fresh stitch."""
    return self._task_loss(cell, *self._stitched(cell))

  def ffm_tlt(self, cell: Cell) -> list[dict]:
    """tlt from the stitch of the ffm cell of the same pair, layer and stitch layer (its units are shared)."""
    model, frozen, init, arrays = self._stitched(cell)
    matched = self._matched(dataclasses.replace(cell, method='ffm'), objectives.ffm_loss, model, frozen, init, arrays)
    return self._task_loss(cell, model, frozen, matched[0], arrays)

  # Stages.
  def _stitched(self, cell: Cell):
    """The cell's stitched model (stitchjax.stitch), its frozen params, its initial stitch, its arrays."""
    s = self.settings
    model = stitch_model(self.backbones[cell.source], self.backbones[cell.target], cell.layer, cell.stitch_layer,
                         task=self.task, lora_rank=s.lora_rank, dtype=s.dtype, remat=s.remat)
    # Placed once, so that training, validation and test see them placed alike and share compilations (the
    # backbones stay process-local: each process extracts its own share of the features with them).
    init = model.init(jax.random.key(s.seed))
    frozen, init = self.placement.replicate((model.frozen(with_source=False), init))
    return model.net, frozen, init, {split: self._arrays(cell, split) for split in ('train', 'val', 'test')}

  def _arrays(self, cell: Cell, split: str) -> dict:
    s, t = self.feats(cell.source, split), self.feats(cell.target, split)
    return {'source': s[f'layer_{cell.layer}'], 'target_layer': t[f'layer_{cell.layer}'],
            'target_final': t['final'], 'label': self.labels(split)}

  def _task_loss(self, cell: Cell, model, frozen, init, arrays) -> list[dict]:
    init = init | {'head': tasks.head_init(model.target.dim, self.num_classes)}
    predict, eval_bs, put = partial(objectives.predictions, model), self.settings.eval_batch_size, self.placement.batch
    params, lr, val = self.sweep(f'{cell.id}/tlt', partial(objectives.tlt_loss, model),
                                 objectives.task_score(self.task, predict, eval_bs, put), init, frozen,
                                 arrays['train'], arrays['val'], self.settings.batch_size('tlt'))
    pred = objectives.evaluate(predict, params, frozen, arrays['test'], eval_bs, put)
    self._save_predictions(cell, pred)
    if cell.method in self.settings.export:
      self._export(cell, model.spec, params)
    return self._test_records(cell, pred, val, lr=lr)

  def _matched(self, cell: Cell, loss_fn, model, frozen, init, arrays):
    """The feature-matching stage of `cell` (lfm or ffm); shared by ffm and ffm_tlt cells."""
    loss = partial(loss_fn, model)
    score = objectives.loss_score(loss, self.settings.eval_batch_size, self.placement.batch)
    return self.sweep(f'{cell.id}/match', loss, score, init, frozen, arrays['train'], arrays['val'],
                      self.settings.batch_size(cell.method))

  def _matching(self, cell: Cell, loss_fn) -> list[dict]:
    model, frozen, init, arrays = self._stitched(cell)
    params, lr, val = self._matched(cell, loss_fn, model, frozen, init, arrays)
    eval_bs, put = self.settings.eval_batch_size, self.placement.batch
    dist = objectives.evaluate(partial(objectives.distances, model), params, frozen, arrays['test'], eval_bs, put)
    if self.task.probe_recomputes:
      pred, probe_lr, probe_val = self._frozen_stitch_probe(cell, model, frozen | params, arrays)
    else:
      pooled_fn = partial(objectives.features, model)
      pooled = {s: objectives.evaluate(pooled_fn, params, frozen, arrays[s], eval_bs, put)['features']
                for s in ('train', 'val', 'test')}
      pred, probe_lr, probe_val = self.probe(f'{cell.id}/probe', pooled)
    self._save_predictions(cell, pred)
    return [cell.record('val', 'match_loss', -val, lr=lr),
            cell.record('test', 'layer_distance', dist['layer_distance'].mean(), lr=lr),
            cell.record('test', 'final_distance', dist['final_distance'].mean(), lr=lr),
            *self._test_records(cell, pred, probe_val, lr=probe_lr, stitch_lr=lr)]

  def _frozen_stitch_probe(self, cell: Cell, model, frozen, arrays) -> tuple[dict, float, float]:
    """A probe of a matched stitch trained on the frozen stitched model's outputs recomputed per batch,
    for tasks whose probe features are too large to cache (a split's dense tokens, at paper scale)."""
    init = {'head': tasks.head_init(model.target.dim, self.num_classes)}
    predict = partial(objectives.frozen_stitch_predictions, model)
    eval_bs, put = self.settings.eval_batch_size, self.placement.batch
    params, lr, val = self.sweep(f'{cell.id}/probe', partial(objectives.frozen_stitch_loss, model),
                                 objectives.task_score(self.task, predict, eval_bs, put), init, frozen,
                                 arrays['train'], arrays['val'], self.settings.batch_size('lp'))
    return objectives.evaluate(predict, params, frozen, arrays['test'], eval_bs, put), lr, val

  # Outputs.
  def _test_records(self, cell: Cell, pred: dict, val: float, **extra) -> list[dict]:
    return self.task.test_records(cell, pred, self.labels('test'), val, **extra)

  def _save_predictions(self, cell: Cell, pred: dict) -> None:
    if distributed.is_main():
      self.task.save_predictions(self.workdir / 'cells' / cell.id, pred)

  def _export(self, cell: Cell, spec, params) -> None:
    sources = {}
    for role, name in (('source', cell.source), ('target', cell.target)):
      path, image_size = self.paths[name]
      sources[role] = {'path': path, 'image_size': image_size,
                       'processor_backend': self.backbones[name].processor_backend,
                       'digest': self.cache.backbone_digest(self.backbones[name])}
    if distributed.is_main():
      export.save_stitched(self.workdir / 'exports' / cell.id, spec, params, self.data.classes, sources, self.task)


def load_data(config, root: pathlib.Path) -> tuple[data_lib.Dataset, dict]:
  """config.data loaded, no split empty, every image checked once: (dataset, {split: images skipped})."""
  data = data_lib.load(config.data)
  for name, split in data.splits.items():
    if not len(split):
      raise ValueError(f'the {name} split of config.data is empty' + (
          f' (data.val_fraction={data_lib.load_options(config.data)["val_fraction"]} of too few training images)'
          if name == 'val' else ''))
  return data, workdir.check_images(root, data, bool(config.data.get('skip_corrupt', False)))


def load_backbones(config, names, task) -> tuple[dict[str, Backbone], dict]:
  """The named config.backbones, as the task sees them, and their configured (path, image_size)."""
  paths = {name: (str(config.backbones[name].path), config.backbones[name].get('image_size')) for name in names}
  backends = {name: configured_processor_backend(name, config.backbones[name]) for name in names}
  backbones = {name: task.backbone(load_backbone(path, image_size=size, dtype=jnp.dtype(config.dtype),
                                                 processor_backend=backends[name]))
               for name, (path, size) in paths.items()}
  return backbones, paths


def runner(config, names=None) -> Runner:
  """A Runner for config: its data and backbones (`names`, default those in config.pairs) loaded, the
  workdir checked against what the results depend on. Call inside workdir.session(config)."""
  root, task = pathlib.Path(config.workdir), tasks.from_config(config)
  data, skipped = load_data(config, root)
  names = names or list(dict.fromkeys(b for pair in pairs(config) for b in pair))
  backbones, paths = load_backbones(config, names, task)
  validate(config, backbones)
  placement = train.Placement.data_parallel()
  out = Runner(root, data, backbones, paths, task, features.Cache(config.get('cache_dir') or root / 'cache'),
               Sweep.from_config(config, placement, metrics.Log(root)), Settings.from_config(config), skipped)
  workdir.check_identity(root, out.identity(config))
  return out


def run(config) -> list[dict]:
  """Runs every cell of the config (resuming finished ones) and returns all records.

  All features are computed before any training, so bad data stops the run before training.
  results.json and results.csv are rewritten after every cell. With several processes, process 0
  holds the workdir lock and writes; every process computes (stitchjax/distributed.py).
  """
  validate(config)
  with workdir.session(config):
    r = runner(config)
    if distributed.is_main():
      r.task.save_test_labels(r.workdir, r.labels('test'))
    for name in r.backbones:
      for split in ('train', 'val', 'test'):
        r.feats(name, split)
    records = [dict.fromkeys(FIELDS[:5]) | {'split': name, 'metric': 'skipped_images', 'value': float(n)}
               for name, n in r.skipped.items()]
    cells = expand(config)
    for i, cell in enumerate(distributed.progress(cells, desc='cells', unit='cell')):
      records += r.run(cell)
      workdir.write_results(r.workdir, records)
      metrics.say(f'cell {i + 1}/{len(cells)} {cell.id}: done')
    workdir.write_results(r.workdir, records)
  return records
