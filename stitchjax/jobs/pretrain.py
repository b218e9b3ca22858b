"""Job 'pretrain': trains every model in config.models (stitchjax/pretrain/), writes their exports in
the transformers layout and pretrain_log.json (configs/pretrain_mini.py)."""
import datetime
import json
import os
import pathlib

import jax
import numpy as np

from convert import hf
from stitchjax import atomic, data, pretrain, vit


def run(config) -> None:
  out = pathlib.Path(config.out_dir)
  splits = data.load(config.data).splits
  probe_data = data.load(config.probe.data)
  sizes = {spec.vit.image_size for spec in config.models.values()}
  if len(sizes) != 1:
    raise ValueError(f'config.models: every model must share one image_size (one processor config), got {sizes}')
  size = sizes.pop()
  arrays = lambda split: {'images': pretrain.images(split, size), 'labels': np.asarray(split.labels)}
  pool, val = arrays(splits['train']), arrays(splits['val'])
  # The probe fits on its train split and is scored on its val split: the test split stays untouched.
  held_out = {'train': arrays(probe_data.splits['train']), 'test': arrays(probe_data.splits['val'])}
  mean, std = pretrain.pixel_stats(pool['images'])
  proc = pretrain.processor_config(size, mean, std)
  print(f'pretraining on {len(pool["images"])} images of {splits["train"].classes}; pixel mean {mean}, std {std}')
  logs = {}
  for name, spec in config.models.items():
    params, logs[name] = pretrain.train_model(name, spec, pool, val, held_out, (mean, std), config.seed, config.log_every)
    # The transformers layout: transformers' from_pretrained reads the mini-VFMs as well as load_backbone.
    hf.save(out / name, vit.ViTConfig(**spec.vit), params, proc)
    logs[name]['export_bytes'] = sum(f.stat().st_size for f in (out / name).rglob('*') if f.is_file())
  device = jax.devices()[0]
  record = {
      'what': 'stitchjax mini-VFMs: small ViTs pretrained by stitchjax (configs/pretrain_mini.py), not real VFMs',
      'data': {'pretraining': config.data.to_dict(), 'classes': splits['train'].classes,
               'images': len(pool['images']), 'pixel_mean': mean, 'pixel_std': std,
               'probe': config.probe.data.to_dict() | {
                   'classes': probe_data.classes, 'fit_images': len(held_out['train']['images']),
                   'scored_images': len(held_out['test']['images'])}},
      'processor_config': proc, 'seed': config.seed, 'models': logs,
      'environment': {'jax': jax.__version__, 'device': f'{device.platform}: {device.device_kind}',
                      'cpu_count': os.cpu_count(),
                      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')},
  }
  text = json.dumps(record, indent=1, default=_jsonable)
  atomic.write_text(out / 'pretrain_log.json', text)
  atomic.write_text(pathlib.Path(config.workdir) / 'pretrain_log.json', text)
  for name, log in logs.items():
    first, last = ({k: v[i] for k, v in log['probe'].items()} for i in (0, -1))
    print(f'{name}: {log["steps"]} steps in {log["wall_seconds"]} s, final loss {log["final_loss"]}; held-out '
          f'classes, random init -> trained: linear probe {first["linear_probe_accuracy"]} -> '
          f'{last["linear_probe_accuracy"]}, k-NN {first["knn_accuracy"]} -> {last["knn_accuracy"]}; '
          f'{out / name} ({log["export_bytes"]} bytes)')


def _jsonable(x):
  return list(x) if isinstance(x, tuple) else x.tolist() if hasattr(x, 'tolist') else str(x)
