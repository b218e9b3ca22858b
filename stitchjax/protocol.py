"""The paper's stitching protocol as resumable cells (paper §3-5, appendix A.2).

A config expands into cells, one per (source, target, layer, method, stitch layer):

- `lp`: a linear probe of each backbone alone on its pooled features (layer None);
- `lfm` / `ffm`: train the stitch by feature matching (label-free), then linear-probe
  the stitched model's pooled output; also record the Figure 2 distances on test;
- `tlt`: train stitch and linear head jointly with cross-entropy;
- `ffm_tlt`: `tlt` initialised from the `ffm` stitch of the same pair, layer and stitch layer.

Every pair's backbones also get self-stitch cells (source = target). Each training
stage sweeps the learning rates, trains each with AdamW and early stopping on the
validation split, and keeps the one with the best validation score; each
(stage, learning rate) is a unit with its own checkpoints and a `done.json`, so a
re-run continues where it stopped and never recomputes a finished unit.
Everything trains from the feature cache: no backbone forward runs in training
except the target suffix after the stitch.

`config.task='segmentation'` (paper §5.1, Table 2's ADE20K column) runs the same cells
with a linear decoder on the final patch tokens in place of the linear head: `lp`
decodes each backbone's cached final patch tokens, `lfm`/`ffm` train the stitch as
above and then a decoder on the frozen stitched model, `tlt`/`ffm_tlt` train stitch and
decoder with per-pixel cross-entropy; the metric is 'miou' (stitchjax/segmentation.py).
"""
import contextlib
import csv
import dataclasses
from functools import partial
import io
import json
import pathlib
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache

from stitchjax import data as data_lib
from stitchjax import atomic, distributed, export, features, metrics, objectives, tasks, train, vit
from stitchjax import stitch_layers as stitch_lib
from stitchjax.backbone import load_backbone
from stitchjax.records import FIELDS, Cell
from stitchjax.model import stitch as stitch_model

METHODS = ('lp', 'lfm', 'ffm', 'tlt', 'ffm_tlt')


def as_list(value) -> list:
  if isinstance(value, str):
    return [v for v in value.split(',') if v]
  return list(value) if isinstance(value, (list, tuple)) else [value]


def typed_list(config, field: str, kind: type) -> list:
  """A list-valued config field ('2,6' or [2, 6]) as `kind` values; a bad entry is named with its field."""
  value = config
  for part in field.split('.'):
    value = value[part]
  out = []
  for entry in as_list(value):
    try:
      out.append(kind(entry))
      if out[-1] != float(entry):  # int(2.5) would pass as 2
        raise ValueError
    except (TypeError, ValueError):
      raise ValueError(f'config.{field}: entry {entry!r} is not {"an integer" if kind is int else "a number"} '
                       f'(in {value!r})') from None
  return out


def pairs(config) -> list[tuple[str, str]]:
  out = []
  for p in as_list(config.pairs):
    pair = tuple(p.split(':')) if isinstance(p, str) else tuple(p)
    if len(pair) != 2:
      raise ValueError(f'pairs entry {p!r} is not a (source, target) pair')
    out.append(pair)
  return out


def expand(config) -> list[Cell]:
  """Cells in run order: probes, then per pair (self-stitches first) layer x stitch layer x method."""
  methods = as_list(config.methods)
  backbones = list(dict.fromkeys(b for pair in pairs(config) for b in pair))
  cells = [Cell(b, b, None, 'lp', None) for b in backbones] if 'lp' in methods else []
  stitched = [m for m in methods if m != 'lp']
  routes = [(b, b) for b in backbones] + [p for p in pairs(config) if p[0] != p[1]]
  for source, target in routes:
    for layer in as_list(config.layers):
      for kind in as_list(config.stitch_layer):
        cells += [Cell(source, target, int(layer), m, kind) for m in stitched]
  return list(dict.fromkeys(cells))


def validate(config, backbones: dict | None = None) -> None:
  """Config errors before any compute, each naming its field. backbones: name -> Backbone or ViTConfig."""
  methods = as_list(config.methods)
  for m in methods:
    if m not in METHODS:
      raise ValueError(f'config.methods: unknown method {m!r}; expected some of {METHODS}')
  for kind in as_list(config.stitch_layer):
    if kind not in stitch_lib.STITCH_LAYERS:
      raise ValueError(f'config.stitch_layer: unknown stitch layer {kind!r}; expected {stitch_lib.STITCH_LAYERS}')
  for source, target in pairs(config):
    for name in (source, target):
      if name not in config.backbones:
        raise ValueError(f'config.pairs: backbone {name!r} is not in config.backbones ({sorted(config.backbones)})')
  task = tasks.from_config(config).name
  data_task = 'segmentation' if config.data.get('kind') in data_lib.PIXEL_CLASSES else 'classification'
  if task != data_task:
    raise ValueError(f'config.task={task!r}, but config.data.kind={config.data.get("kind")!r} is a {data_task} '
                     f'dataset; segmentation kinds are {sorted(data_lib.PIXEL_CLASSES)}')
  t = config.train
  for field in ('epochs', 'patience'):
    if not t[field] > 0:
      raise ValueError(f'config.train.{field}={t[field]} must be positive')
  layers = typed_list(config, 'layers', int)
  for lr in typed_list(config, 'train.lrs', float):
    if not lr > 0:
      raise ValueError(f'config.train.lrs: learning rate {lr:g} must be positive')
  for method, size in t.batch_size.items():
    if not size > 0:
      raise ValueError(f'config.train.batch_size.{method}={size} must be positive')
    if size % jax.device_count():
      raise ValueError(f'config.train.batch_size.{method}={size} is not divisible by the {jax.device_count()} devices')
  size = config.get('eval_batch_size', 0)
  if size and (size < 0 or size % jax.device_count()):
    raise ValueError(f'config.eval_batch_size={size} must be positive and divisible by the {jax.device_count()} '
                     'devices (0: the training batch size)')
  for layer in layers:
    for name, bb in (backbones or {}).items():
      depth = bb.depth if isinstance(bb, vit.ViTConfig) else bb.config.depth
      if not 1 <= layer <= depth - 1:
        raise ValueError(f'config.layers: layer {layer} is outside 1..{depth - 1} for backbone {name!r}')


def _same_backbone(before, now: dict) -> bool:
  """Workdirs written before the identity held a backbone's setup recorded its parameter digest alone."""
  if isinstance(before, str):
    return before == now['params']
  return json.loads(json.dumps(now)) == before


def _write_json(path: pathlib.Path, obj) -> None:
  """Process 0 writes (stitchjax/distributed.py); the others compute the same and read it back."""
  if distributed.is_main():
    atomic.write_text(path, json.dumps(obj, indent=1, default=float))


def write_results(workdir: pathlib.Path, records: list[dict]) -> None:
  """results.json and results.csv (one row per record, the union of their fields), both atomically."""
  if not distributed.is_main():
    return
  _write_json(workdir / 'results.json', records)
  fields = list(dict.fromkeys(k for r in records for k in r))
  out = io.StringIO()
  writer = csv.DictWriter(out, fields, lineterminator='\n')
  writer.writeheader()
  writer.writerows(records)
  atomic.write_text(workdir / 'results.csv', out.getvalue())


class Runner:
  """Runs cells against one dataset and one set of backbones, sharing the feature cache."""

  def __init__(self, config):
    self.config = config
    self.workdir = pathlib.Path(config.workdir)
    self.placement = train.Placement.data_parallel()
    self.task = tasks.from_config(config)
    # Validation and test passes need no gradients, so they run in larger batches than training.
    self.eval_batch_size = int(config.get('eval_batch_size') or config.train.batch_size['default'])
    self.data = data_lib.load(config.data)
    for name, split in self.data.splits.items():
      if not len(split):
        raise ValueError(f'the {name} split of config.data is empty' + (
            f' (data.val_fraction={data_lib.load_options(config.data)["val_fraction"]} of too few training images)' if name == 'val'
            else ''))
    self.skipped = self._check_images(bool(config.data.get('skip_corrupt', False)))
    self.backbones = {name: self.task.backbone(load_backbone(spec.path, image_size=spec.get('image_size'),
                                                             dtype=jnp.dtype(config.dtype)))
                      for name, spec in config.backbones.items()
                      if any(name in p for p in pairs(config))}
    validate(config, self.backbones)
    self.cache = features.Cache(config.get('cache_dir') or self.workdir / 'cache')
    self.log = metrics.Log(self.workdir)
    self.num_classes = len(self.data.classes)
    self._check_workdir()

  def _check_workdir(self) -> None:
    """Finished cells are reused by name, so a workdir must only ever see one dataset, set of backbones
    and training setup; anything else would silently mix results."""
    c = self.config
    identity = {'classes': self.data.classes,
                'splits': {name: split.fingerprint for name, split in self.data.splits.items()},
                'backbones': {name: self._backbone_identity(bb) for name, bb in self.backbones.items()},
                'train': c.train.to_dict(), 'dtype': c.dtype, 'seed': c.seed, 'lora_rank': c.lora_rank}
    identity |= self.task.identity()
    path = self.workdir / 'run.json'
    if not path.exists():
      _write_json(path, identity)
      return
    before = json.loads(path.read_text())
    if len(before['classes']) != len(identity['classes']):
      raise ValueError(f'class-count mismatch: {self.workdir} holds results for {len(before["classes"])} classes, '
                       f'but config.data gives {len(identity["classes"])}; use another workdir')
    for key in identity:
      if key == 'backbones':  # new backbones may join; known ones must be the same checkpoints, run the same way
        changed = [n for n, d in identity[key].items() if not _same_backbone(before[key].get(n, d), d)]
      else:
        changed = [] if json.loads(json.dumps(identity[key])) == before.get(key) else [key]
      if changed:
        raise ValueError(f'{self.workdir} holds results computed with a different {key} ({changed}); finished '
                         'cells would be reused. Use another workdir, or restore the previous setting')
    _write_json(path, identity | {'backbones': before['backbones'] | identity['backbones']})

  def _backbone_identity(self, bb) -> dict:
    """What a backbone's cached features and results depend on: its parameters, its architecture at the
    run's image size and its preprocessing (DINOv3's RoPE has the same parameters at every resolution)."""
    setup = dataclasses.replace(bb.config, dtype='float32', remat=False)  # compute settings are the run's
    return {'params': self.cache.backbone_digest(bb), 'config': setup.to_dict(),
            'preprocess': bb.preprocessing.to_dict()}

  # Data.
  def _check_images(self, skip_corrupt: bool) -> dict:
    """Every image decoded once before any compute (remembered per split content in the workdir)."""
    record = self.workdir / 'image_check.json'
    known = json.loads(record.read_text()) if record.exists() else {}
    skipped, annotated = {}, self.data.task == 'segmentation'
    for name, split in list(self.data.splits.items()):
      if split.fingerprint not in known:
        _, errors = data_lib.check_images(split, name, skip_corrupt=True, annotated=annotated)
        known[split.fingerprint] = errors
        _write_json(record, known)
      errors = known[split.fingerprint]
      if errors and not skip_corrupt:
        data_lib.check_images(split, name, skip_corrupt=False, annotated=annotated)  # raises
      if errors:
        self.data.splits[name], _ = data_lib.check_images(split, name, skip_corrupt=True, annotated=annotated)
        warnings.warn(f'skipping {len(errors)} unreadable {name} image(s), e.g. {errors[0]}')
      skipped[name] = len(errors)
    return skipped

  def feats(self, name: str, split: str) -> dict:
    bb = self.backbones[name]
    return self.cache.tokens(bb, name, self.data.splits[split], split, layers=as_list(self.config.layers),
                             final=True, pooled=bb.config.pool != 'none', batch_size=self.config.feature_batch_size)

  def labels(self, split: str) -> np.ndarray:
    """Classification: int32 (N,); segmentation: uint8 (N, L, L) annotations at config.label_size."""
    return self.task.labels(self.data.splits[split], self.cache)

  def batch_size(self, method: str) -> int:
    sizes = self.config.train.batch_size
    return int(sizes[method] if method in sizes else sizes['default'])

  # Training stages.
  def sweep(self, unit: str, loss_fn, score_fn, init, frozen, train_arrays, val_arrays, batch_size) -> tuple:
    """Trains at every learning rate; returns (params, lr, val score) of the best by validation."""
    root = self.workdir / 'cells' / unit
    t = self.config.train
    done, trained = {}, {}
    for lr in as_list(t.lrs):
      lr = float(lr)
      d = root / f'lr_{lr:g}'
      if not distributed.agree((d / 'done.json').exists()):
        schedule = train.Schedule(lr=lr, epochs=int(t.epochs), patience=int(t.patience), batch_size=batch_size,
                                  weight_decay=float(t.weight_decay), seed=int(self.config.seed),
                                  checkpoint_every_s=float(t.get('checkpoint_every_s', 0.0)))
        params, history = train.fit(loss_fn, score_fn, init, frozen, train_arrays, val_arrays, schedule,
                                    d / 'ckpt', desc=f'{unit} lr={lr:g}', placement=self.placement, log=self.log)
        self.log.end(f'{unit} lr={lr:g}', f'done after {history["epochs"]} epochs, best val {history["best_val_score"]:.4g}')
        train.save_tree(d / 'params', params)
        _write_json(d / 'done.json', {'lr': lr, 'val_score': history['best_val_score'], 'history': history})
        trained[lr], done[lr] = params, history['best_val_score']
      else:
        done[lr] = json.loads((d / 'done.json').read_text())['val_score']
    best = max(done, key=lambda lr: (done[lr], -lr))  # ties go to the smaller learning rate
    if best not in trained:
      trained[best] = train.load_tree(root / f'lr_{best:g}' / 'params', init)
    return trained[best], best, done[best]

  def probe(self, unit: str, feats: dict) -> tuple[dict, float, float]:
    """Linear probe on fixed features {split: (N, D)} (segmentation: patch tokens (N, g*g, D)):
    (test predictions {name: (N, ...)}, lr, val score)."""
    bs, task = self.batch_size('lp'), self.task
    feats = task.probe_inputs(feats)
    arrays = {s: {'features': feats[s], 'label': self.labels(s)} for s in ('train', 'val', 'test')}
    init = {'head': tasks.head_init(feats['train'].shape[-1], self.num_classes)}
    eval_bs, put = self.eval_batch_size, self.placement.batch
    score = objectives.task_score(task, task.probe_predictions, eval_bs, put)
    params, lr, val = self.sweep(unit, task.probe_loss, score, init, {}, arrays['train'], arrays['val'], bs)
    return objectives.evaluate(task.probe_predictions, params, {}, arrays['test'], eval_bs, put), lr, val

  # Cells.
  def run(self, cell: Cell) -> list[dict]:
    """A cell's records; a non-finite loss stops the cell, is recorded, and the sweep goes on."""
    out_path = self.workdir / 'cells' / cell.id / 'result.json'
    if distributed.agree(out_path.exists()):
      return json.loads(out_path.read_text())
    try:
      records = self.run_lp(cell) if cell.method == 'lp' else self.run_stitch(cell)
    except FloatingPointError as e:
      warnings.warn(f'cell {cell.id} failed: {e}')
      records = [cell.record('test', 'failed', 0.0) | {'value': None, 'error': str(e)}]
    _write_json(out_path, records)
    return records

  def run_lp(self, cell: Cell) -> list[dict]:
    entries = {s: self.feats(cell.source, s) for s in ('train', 'val', 'test')}
    pred, lr, val = self.probe(cell.id, self.task.probe_features(entries, self.backbones[cell.source].config))
    self._save_predictions(cell, pred)
    return self._test_records(cell, pred, val, lr=lr)

  def _test_records(self, cell: Cell, pred: dict, val: float, **extra) -> list[dict]:
    return self.task.test_records(cell, pred, self.labels('test'), val, **extra)

  def _stitched(self, cell: Cell):
    """The cell's stitched model (stitchjax.stitch), its frozen params and its initial stitch."""
    model = stitch_model(self.backbones[cell.source], self.backbones[cell.target], cell.layer, cell.stitch_layer,
                         task=self.task, lora_rank=int(self.config.lora_rank), dtype=self.config.dtype,
                         # the target suffix recomputes its activations in the backward pass instead of keeping them
                         remat=bool(self.config.get('remat', False)))
    # Placed once, so that training, validation and test see them placed alike and share compilations (the
    # backbones stay process-local: each process extracts its own share of the features with them).
    init = model.init(jax.random.key(int(self.config.seed)))
    frozen, init = self.placement.replicate((model.frozen(with_source=False), init))
    return model.net, frozen, init

  def _arrays(self, cell: Cell, split: str) -> dict:
    s, t = self.feats(cell.source, split), self.feats(cell.target, split)
    return {'source': s[f'layer_{cell.layer}'], 'target_layer': t[f'layer_{cell.layer}'],
            'target_final': t['final'], 'label': self.labels(split)}

  def run_stitch(self, cell: Cell) -> list[dict]:
    model, frozen, init = self._stitched(cell)
    arrays = {s: self._arrays(cell, s) for s in ('train', 'val', 'test')}
    if cell.method in ('lfm', 'ffm'):
      return self._matching(cell, model, frozen, init, arrays)
    if cell.method == 'ffm_tlt':
      ffm = dataclasses.replace(cell, method='ffm')
      init = self._matched_stitch(ffm, model, frozen, init, arrays)[0]
    bs = self.batch_size('tlt')
    init = init | {'head': tasks.head_init(model.target.dim, self.num_classes)}
    predict, eval_bs, put = partial(objectives.predictions, model), self.eval_batch_size, self.placement.batch
    params, lr, val = self.sweep(f'{cell.id}/tlt', partial(objectives.tlt_loss, model),
                                 objectives.task_score(self.task, predict, eval_bs, put), init, frozen,
                                 arrays['train'], arrays['val'], bs)
    pred = objectives.evaluate(predict, params, frozen, arrays['test'], eval_bs, put)
    self._save_predictions(cell, pred)
    if cell.method in as_list(self.config.export):
      self._export(cell, model.spec, params)
    return self._test_records(cell, pred, val, lr=lr)

  def _matched_stitch(self, cell: Cell, model, frozen, init, arrays):
    """The feature-matching stage of `cell` (lfm or ffm); shared by ffm and ffm_tlt cells."""
    loss = partial(objectives.lfm_loss if cell.method == 'lfm' else objectives.ffm_loss, model)
    bs = self.batch_size(cell.method)
    score = objectives.loss_score(loss, self.eval_batch_size, self.placement.batch)
    return self.sweep(f'{cell.id}/match', loss, score, init, frozen, arrays['train'], arrays['val'], bs)

  def _matching(self, cell, model, frozen, init, arrays) -> list[dict]:
    params, lr, val = self._matched_stitch(cell, model, frozen, init, arrays)
    eval_bs, put = self.eval_batch_size, self.placement.batch
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
    bs = self.batch_size('lp')
    init = {'head': tasks.head_init(model.target.dim, self.num_classes)}
    predict, eval_bs, put = partial(objectives.frozen_stitch_predictions, model), self.eval_batch_size, self.placement.batch
    params, lr, val = self.sweep(f'{cell.id}/probe', partial(objectives.frozen_stitch_loss, model),
                                 objectives.task_score(self.task, predict, eval_bs, put), init, frozen,
                                 arrays['train'], arrays['val'], bs)
    return objectives.evaluate(predict, params, frozen, arrays['test'], eval_bs, put), lr, val

  def _export(self, cell: Cell, spec, params) -> None:
    sources = {}
    for role, name in (('source', cell.source), ('target', cell.target)):
      bb_spec = self.config.backbones[name]
      sources[role] = {'path': str(bb_spec.path), 'image_size': bb_spec.get('image_size'),
                       'digest': self.cache.backbone_digest(self.backbones[name])}
    if distributed.is_main():
      export.save_stitched(self.workdir / 'exports' / cell.id, spec, params, self.data.classes, sources,
                           self.task.name, self.task.label_size)

  def _save_predictions(self, cell: Cell, pred: dict) -> None:
    if distributed.is_main():
      self.task.save_predictions(self.workdir / 'cells' / cell.id, pred)


def run(config) -> list[dict]:
  """Runs every cell of the config (resuming finished ones) and returns all records.

  All features are computed before any training, so bad data stops the run before training.
  results.json and results.csv are rewritten after every cell. With several processes, process 0
  holds the workdir lock and writes; every process computes (stitchjax/distributed.py).
  """
  validate(config)
  with session(config):
    runner = Runner(config)
    if distributed.is_main():
      runner.task.save_test_labels(runner.workdir, runner.labels('test'))
    for name in runner.backbones:
      for split in ('train', 'val', 'test'):
        runner.feats(name, split)
    records = [dict.fromkeys(FIELDS[:5]) | {'split': name, 'metric': 'skipped_images', 'value': float(n)}
               for name, n in runner.skipped.items()]
    cells = expand(config)
    for i, cell in enumerate(distributed.progress(cells, desc='cells', unit='cell')):
      records += runner.run(cell)
      write_results(runner.workdir, records)
      metrics.say(f'cell {i + 1}/{len(cells)} {cell.id}: done')
    write_results(runner.workdir, records)
  return records


@contextlib.contextmanager
def session(config):
  """What a job holds while it runs: the workdir lock and the persistent compilation cache."""
  with _lock(config.workdir), compilation_cache(config):
    metrics.record_run(config.workdir, config, sys.argv)
    yield


@contextlib.contextmanager
def compilation_cache(config):
  """XLA's persistent compilation cache in config.compilation_cache_dir (default: the one JAX is already set to
  use, e.g. by $JAX_COMPILATION_CACHE_DIR, else <cache_dir>/xla; 'none': off), so that a resumed or repeated run
  loads what it compiled before instead of compiling it again.

  Safe to share: JAX writes entries from process 0 only, and a size bound turns on JAX's file lock
  around every read and write, which keeps concurrent runs on one directory from reading half-written
  entries.
  """
  directory = config.get('compilation_cache_dir', '')
  if directory == 'none' or (not directory and jax.config.jax_compilation_cache_dir):
    yield
    return
  directory = directory or str(pathlib.Path(config.get('cache_dir') or pathlib.Path(config.workdir) / 'cache') / 'xla')
  settings = {'jax_compilation_cache_dir': directory, 'jax_compilation_cache_max_size': XLA_CACHE_BYTES,
              # the small programs of a CPU run compile in well under JAX's default 1 s threshold
              'jax_persistent_cache_min_compile_time_secs': 0.0}
  before = {name: getattr(jax.config, name) for name in settings}
  for name, value in settings.items():
    jax.config.update(name, value)
  jax_compilation_cache.reset_cache()  # JAX opens its cache once per process; open this one
  try:
    yield
  finally:
    for name, value in before.items():
      jax.config.update(name, value)
    jax_compilation_cache.reset_cache()


XLA_CACHE_BYTES = 4 * 2**30


@contextlib.contextmanager
def _lock(workdir):
  """The workdir lock, held by process 0 for the whole run; the others stop with its error too."""
  with contextlib.ExitStack() as stack:
    error = None
    if distributed.is_main():
      try:
        stack.enter_context(atomic.workdir_lock(workdir))
      except RuntimeError as e:
        error = e
    if distributed.agree(error is not None):
      raise error or RuntimeError(f'process 0 could not lock the workdir {workdir}; see its error')
    yield
