"""The learning-rate sweep over train.fit that every training stage of the protocol runs (appendix A.2.2).

Each learning rate is a unit of its own under `root/lr_<lr>`: orbax checkpoints every epoch, the best
params and a `done.json` when it finishes, so a re-run trains only what is not done. The sweep keeps the
learning rate with the best validation score (ties go to the smaller rate).
"""
import dataclasses
import json
import pathlib

from stitchjax import checkpoints, distributed, metrics, train
from stitchjax.cells import typed_list
from stitchjax.workdir import write_json


@dataclasses.dataclass(frozen=True)
class Sweep:
  lrs: tuple[float, ...]
  epochs: int
  patience: int
  weight_decay: float
  seed: int
  placement: train.Placement
  log: metrics.Log
  checkpoint_every_s: float = 0.0

  @classmethod
  def from_config(cls, config, placement: train.Placement, log: metrics.Log) -> 'Sweep':
    """config.train.{lrs, epochs, patience, weight_decay, checkpoint_every_s} and config.seed."""
    t = config.train
    return cls(tuple(typed_list(config, 'train.lrs', float)), int(t.epochs), int(t.patience), float(t.weight_decay),
               int(config.seed), placement, log, float(t.get('checkpoint_every_s', 0.0)))

  def __call__(self, root: pathlib.Path, unit: str, loss_fn, score_fn, init, frozen, train_arrays, val_arrays,
               batch_size: int) -> tuple:
    """Trains at every learning rate; returns (params, lr, val score) of the best by validation."""
    done, trained = {}, {}
    for lr in self.lrs:
      d = root / f'lr_{lr:g}'
      if not distributed.agree((d / 'done.json').exists()):
        schedule = train.Schedule(lr=lr, epochs=self.epochs, patience=self.patience, batch_size=batch_size,
                                  weight_decay=self.weight_decay, seed=self.seed,
                                  checkpoint_every_s=self.checkpoint_every_s)
        params, history = train.fit(loss_fn, score_fn, init, frozen, train_arrays, val_arrays, schedule, d / 'ckpt',
                                    desc=f'{unit} lr={lr:g}', placement=self.placement, log=self.log)
        self.log.end(f'{unit} lr={lr:g}', f'done after {history["epochs"]} epochs, '
                                          f'best val {history["best_val_score"]:.4g}')
        checkpoints.save_tree(d / 'params', params)
        write_json(d / 'done.json', {'lr': lr, 'val_score': history['best_val_score'], 'history': history})
        trained[lr], done[lr] = params, history['best_val_score']
      else:
        done[lr] = json.loads((d / 'done.json').read_text())['val_score']
    best = max(done, key=lambda lr: (done[lr], -lr))  # ties go to the smaller learning rate
    if best not in trained:
      trained[best] = checkpoints.load_tree(root / f'lr_{best:g}' / 'params', init)
    return trained[best], best, done[best]
