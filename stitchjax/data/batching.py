"""The project's one batcher: which indices form each batch (`batch_indices`), and batches of
preprocessed images from a split read in that order by a grain pipeline (`batches`)."""
import dataclasses
import os

from absl import flags
import grain
import numpy as np

from stitchjax.data.splits import Split, is_int


@dataclasses.dataclass(frozen=True)
class _Example:
  """Index -> (image float32 (S, S, 3), label int32, index int32); picklable for worker processes."""
  split: Split
  preprocess: object

  def __call__(self, i):
    image = np.asarray(self.preprocess([self.split.image(i)])[0], np.float32)
    return image, np.int32(self.split.labels[i]), np.int32(i)


def batch_indices(n: int, batch_size: int, *, seed: int | None, epoch: int = 0, drop_remainder: bool = False):
  """Index arrays of consecutive batches of range(n), permuted by a generator drawn from (seed, epoch)
  (seed None: in order); with drop_remainder, full batches only. Every batcher draws from it, so a
  resumed epoch sees exactly the batches it would have seen."""
  if not is_int(batch_size) or batch_size < 1:
    raise ValueError(f'batch_size={batch_size!r} must be a positive int')
  order = np.arange(n) if seed is None else np.random.default_rng([seed, epoch]).permutation(n)
  for start in range(0, n - batch_size + 1 if drop_remainder else n, batch_size):
    yield order[start:start + batch_size]


def batches(split: Split, preprocess, batch_size: int, *, seed: int | None, epoch: int = 0,
            drop_remainder: bool = False, num_workers: int = 0):
  """Iterator of (images float32 (B, S, S, 3), labels int32 (B,), indices int32 (B,)) over `split`.

  A grain pipeline over the batches of `batch_indices` (seed None: in order): read +
  `preprocess` (a callable list of uint8 (H, W, 3) -> float32 (B, S, S, 3), called
  per image, so each backbone gets its own preprocessing of the same images), then
  batching. Deterministic: threads and `num_workers` worker processes preserve
  order. `indices` are positions in `split`.
  """
  order = list(batch_indices(len(split), batch_size, seed=seed, epoch=epoch, drop_remainder=drop_remainder))
  ds = grain.MapDataset.source(np.concatenate(order) if order else np.zeros(0, np.int64))
  # Prefetch at most two batches of images: preprocessed images are large (336 px: 1.3 MB each).
  # More reader threads than cores only adds polling overhead.
  options = grain.ReadOptions(num_threads=min(16, os.cpu_count() or 1, batch_size), prefetch_buffer_size=2 * batch_size)
  it = ds.map(_Example(split, preprocess)).to_iter_dataset(options)
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():
      # grain's workers read its absl flags; outside an absl app, take their defaults as absl.app would.
      flags.FLAGS.mark_as_parsed()
    # Workers take strided slices of the examples and grain interleaves them back in order; batching
    # after that makes batches independent of the number of workers.
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  # The order holds whole batches of batch_indices (the last may be short): batching it keeps them.
  return iter(it.batch(batch_size, batch_fn=_stack))


def _stack(examples):
  """[(image, label, index)] -> ((B, S, S, 3), (B,), (B,)) plain numpy arrays (not shared-memory views)."""
  return tuple(np.stack([np.asarray(e[k]) for e in examples]) for k in range(3))
