"""A whole stitching job: stitchjax.fit against the PyTorch loop a researcher would write with transformers.

    python benchmarks/job.py --size S       # DINOv2 -> SigLIP layouts at ViT-S, 112 px, random weights (issue 25)
    python benchmarks/job.py --size mini    # the demo's mini-VFMs, dino_mini -> siglip_mini at 28 px

One process runs three jobs in turn, on the same backbones (the same weights), pixels, stitch (an
MLP at block n, from the same initial weights), schedule (FFM, then TLT from its best stitch with a
zero head: `--epochs` each, AdamW, a validation pass per epoch keeping the best epoch, patience =
epochs so that every epoch runs) and data (Fashion-MNIST, 10 classes, 512 train and 256 val images,
which each backbone's own preprocessing resizes):

- stitchjax: `stitchjax.fit(model, params, train, loss='ffm_tlt', val=val, ...)`, timed through its
  public API as a user calls it, compilations included. It computes the backbones' tokens once for
  both stages and holds them in bfloat16 (its feature cache, in memory); on CPUs each program compiles
  at its first call, so a stage's first epoch holds its compilations.
- torch-naive: transformers' own modules (Dinov2Model, SiglipVisionModel, eval mode, no gradients for
  their weights) run piecewise in float32: the source's embeddings and blocks [0, n) under no_grad,
  the stitch, the target's blocks [n, N), its post_layernorm and, for TLT, its MAP head and a linear
  head. Every step recomputes the frozen source prefix, and every FFM step the target's final tokens.
- torch-cached: the same loop, with the source's tokens after block n and the target's final tokens
  computed once (train and val) and held in memory in float32; TLT reuses the source's.

Times come from per-epoch records: stitchjax's `log=` callback, whose `seconds` is the epoch's training
and validation (so an epoch starts `seconds` before its record), and the same records from the torch
loops, which also time their first step. stitchjax's API does not expose its first step, so its first
epoch holds its compilations. The torch pixels are stitchjax's preprocessing of the same uint8 images,
computed once; that time counts in both torch jobs, as stitchjax.fit preprocesses inside its own.
torch's one-time costs (its first calls) fall on torch-naive, which runs first.
After the jobs, so that nothing warms stitchjax up, the torch composition is checked against stitchjax
on the first training batch: the stitched tokens and pooled features, the FFM loss and one AdamW step.
CPU only: both runtimes use the process's cores (--cores pins both).
"""
import argparse
import dataclasses
import functools
import math
import os
import sys
import time

import jax
import numpy as np
import optax
import torch
import torch.nn.functional as F
import transformers as T

import forward as fwd
import stitchjax
from stitchjax import config_lib, data, objectives, train

NUM_CLASSES = 10  # Fashion-MNIST
SEED = 0
WEIGHT_DECAY = 1e-4  # stitchjax.fit's default
TORCH_JOBS = ('torch-naive', 'torch-cached')
IMAGE_SIZE = 112  # the random-weight sizes; patch 14 (DINOv2) and 16 (SigLIP): 8x8 and 7x7 grids


def backbones(size: str) -> tuple:
  """((source transformers model, the same weights as a stitchjax Backbone), (target ..., ...))."""
  if size != 'mini':
    return fwd.load_pair('dinov2', size, IMAGE_SIZE, 'float32'), fwd.load_pair('siglip2', size, IMAGE_SIZE, 'float32')
  pairs = []
  for name, cls in (('dino_mini', T.Dinov2Model), ('siglip_mini', T.SiglipVisionModel)):
    spec = config_lib.MINI_VFMS[name]
    pairs.append((cls.from_pretrained(spec['path'], attn_implementation='sdpa').eval(),
                  stitchjax.load_backbone(spec['path'], image_size=spec['image_size'])))
  return tuple(pairs)


def fashion_mnist(root: str, counts: dict) -> dict:
  """{split: {'image': uint8 (N, 28, 28, 3), 'label': int32 (N,)}}: a seeded draw of counts[split] images from
  Fashion-MNIST's train split and the val split carved from it."""
  splits = data.load(dict(kind='fashion_mnist', root=root, seed=SEED)).splits
  out = {}
  for name, count in counts.items():
    split = splits[name]
    keep = np.sort(np.random.default_rng(SEED).permutation(len(split))[:count])
    out[name] = {'image': np.stack([split.image(i) for i in keep]), 'label': split.labels[keep]}
  return out


@dataclasses.dataclass
class Clock:
  """One job's times, in seconds from its start: per-epoch records as stitchjax.fit's `log` gives them, each
  stamped with when it came ('at'), and the torch loops' first step."""
  name: str
  started: float
  records: list = dataclasses.field(default_factory=list)
  first_step: float | None = None
  wall: float | None = None

  def now(self) -> float:
    return time.perf_counter() - self.started

  def log(self, record: dict) -> None:
    self.records.append(record | {'at': self.now()})
    print(f'# {self.name} {record["unit"]} epoch {record["epoch"]}: train loss {record["train_loss"]:.4f}, '
          f'val {record["val_score"]:.4f}, {record["seconds"]:.1f} s', file=sys.stderr, flush=True)

  def step(self) -> None:
    if self.first_step is None:
      self.first_step = self.now()

  def stop(self) -> None:
    self.wall = self.now()

  def stage(self, unit: str) -> list:
    return [r for r in self.records if r['unit'] == unit]

  def epoch_seconds(self, unit: str) -> list:
    return [r['seconds'] for r in self.stage(unit)]

  @property
  def first_epoch_starts(self) -> float:
    return self.records[0]['at'] - self.records[0]['seconds']

  @property
  def switch(self) -> float:
    """From the last FFM epoch's end to the first TLT epoch's start."""
    tlt = self.stage('tlt')[0]
    return tlt['at'] - tlt['seconds'] - self.stage('ffm')[-1]['at']

  @property
  def ffm_val_mse(self) -> float:
    return -max(r['val_score'] for r in self.stage('ffm'))

  @property
  def val_accuracy(self) -> float:
    """The best TLT epoch's: what each job returns."""
    return max(r['val_score'] for r in self.stage('tlt'))


def stitchjax_job(model, init: dict, splits: dict, args) -> Clock:
  clock = Clock('stitchjax', time.perf_counter())
  stitchjax.fit(model, init, splits['train'], loss='ffm_tlt', val=splits['val'], lr=args.lr, epochs=args.epochs,
                patience=args.epochs, batch_size=args.batch, weight_decay=WEIGHT_DECAY, seed=SEED, log=clock.log)
  clock.stop()
  return clock


# The PyTorch side: transformers' DINOv2 and SigLIP modules run piecewise.
class Stitch(torch.nn.Module):
  """stitchjax's 'mlp' stitch (Linear-ReLU-Linear, hidden width = target dim) and its token alignment for a DINOv2
  source and a SigLIP target (stitch_layers.align): the target has no CLS, so the source's is dropped, and the
  source's patch grid is resampled bilinearly (antialiased) to the target's. Starts from stitchjax's params."""

  def __init__(self, params: dict, grid: int):
    super().__init__()
    (d_source, d_target), self.grid = params['fc1']['kernel'].shape, grid
    self.fc1, self.fc2 = torch.nn.Linear(d_source, d_target), torch.nn.Linear(d_target, d_target)
    with torch.no_grad():
      for name in ('fc1', 'fc2'):
        getattr(self, name).weight.copy_(torch.from_numpy(np.array(params[name]['kernel']).T))
        getattr(self, name).bias.copy_(torch.from_numpy(np.array(params[name]['bias'])))

  def forward(self, tokens):
    """(B, 1 + g*g, D_s) DINOv2 tokens -> (B, grid*grid, D_t) SigLIP tokens."""
    patches = self.fc2(F.relu(self.fc1(tokens[:, 1:])))
    b, count, d = patches.shape
    g = math.isqrt(count)
    if g == self.grid:
      return patches
    image = patches.transpose(1, 2).reshape(b, d, g, g)
    image = F.interpolate(image, size=(self.grid, self.grid), mode='bilinear', antialias=True)
    return image.flatten(2).transpose(1, 2)


def source_tokens(source, pixels, n: int):
  """DINOv2's tokens after block n (B, T_s, D_s) from NCHW pixels."""
  x = source.embeddings(pixels)
  for block in source.encoder.layer[:n]:
    x = block(x)
  return x


def target_final(target, tokens, start: int):
  """SigLIP's tokens after block `start` -> its final (post_layernorm) tokens (B, T_t, D_t)."""
  for block in target.encoder.layers[start:]:
    tokens = block(tokens, None)
  return target.post_layernorm(tokens)


def target_reference(target, pixels):
  """The target's own final tokens: what FFM matches."""
  return target_final(target, target.embeddings(pixels), 0)


def in_batches(fn, x, batch_size: int):
  return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def torch_fit(modules: list, loss_fn, score_fn, count: int, unit: str, args, clock: Clock) -> None:
  """AdamW on `modules` for args.epochs epochs (stitchjax's batches: the same seeded order), a validation pass
  after each, and the best epoch's weights loaded back at the end. loss_fn(indices) -> scalar; score_fn() ->
  validation score, higher is better."""
  optimizer = torch.optim.AdamW([p for m in modules for p in m.parameters()], lr=args.lr, weight_decay=WEIGHT_DECAY)
  best, best_score = None, -math.inf
  for epoch in range(args.epochs):
    started, losses = time.perf_counter(), []
    for indices in data.batch_indices(count, args.batch, seed=SEED, epoch=epoch):
      loss = loss_fn(torch.from_numpy(indices))
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      losses.append(loss.detach())
      clock.step()
    with torch.no_grad():
      score = score_fn()
    if score > best_score:
      best, best_score = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules], score
    clock.log({'unit': unit, 'epoch': epoch + 1, 'train_loss': float(torch.stack(losses).mean()), 'val_score': score,
               'seconds': time.perf_counter() - started})
  for m, state in zip(modules, best):
    m.load_state_dict(state)


def torch_job(clock: Clock, cached: bool, source, target, n: int, init: dict, pixels: dict, labels: dict,
              args) -> Clock:
  """FFM then TLT with transformers' modules. cached: the frozen tokens are computed once and held in memory;
  else every step recomputes them. pixels: {split: {'source', 'target'}: NCHW float32}; labels: {split: (N,)}."""
  stitch = Stitch(init['stitch'], int(math.isqrt(target.embeddings.num_patches)))
  if cached:
    with torch.no_grad():
      memory = {split: {'source': in_batches(lambda x: source_tokens(source, x, n), p['source'], args.batch),
                        'reference': in_batches(lambda x: target_reference(target, x), p['target'], args.batch)}
                for split, p in pixels.items()}

  def tokens(split: str, indices):
    """The source's tokens after block n (B, T_s, D_s)."""
    if cached:
      return memory[split]['source'][indices]
    with torch.no_grad():
      return source_tokens(source, pixels[split]['source'][indices], n)

  def reference(split: str, indices):
    """The target's own final tokens (B, T_t, D_t)."""
    if cached:
      return memory[split]['reference'][indices]
    with torch.no_grad():
      return target_reference(target, pixels[split]['target'][indices])

  def stitched(split: str, indices):
    return target_final(target, stitch(tokens(split, indices)), n)

  def ffm_loss(indices, split='train'):
    return F.mse_loss(stitched(split, indices), reference(split, indices))

  head = torch.nn.Linear(target.config.hidden_size, NUM_CLASSES)
  torch.nn.init.zeros_(head.weight)
  torch.nn.init.zeros_(head.bias)

  def logits(indices, split='train'):
    return head(target.head(stitched(split, indices)))

  def val_batches():
    return (torch.from_numpy(i) for i in data.batch_indices(len(labels['val']), args.batch, seed=None))

  def ffm_score():
    return -sum(float(ffm_loss(i, 'val')) * len(i) for i in val_batches()) / len(labels['val'])

  def tlt_score():
    return sum(int((logits(i, 'val').argmax(-1) == labels['val'][i]).sum()) for i in val_batches()) / len(labels['val'])

  count = len(labels['train'])
  torch_fit([stitch], ffm_loss, ffm_score, count, 'ffm', args, clock)
  torch_fit([stitch, head], lambda i: F.cross_entropy(logits(i), labels['train'][i]), tlt_score, count, 'tlt', args,
            clock)
  clock.stop()
  return clock


def check(model, init: dict, source, target, pixels: dict, images: np.ndarray, args) -> str:
  """The torch composition against stitchjax's on the first training batch, from the same float32 pixels."""
  n, indices = model.spec.layer, next(data.batch_indices(len(images), args.batch, seed=SEED, epoch=0))
  x = {side: pixels[side][indices] for side in ('source', 'target')}
  nchw = {side: torch.from_numpy(v).permute(0, 3, 1, 2).contiguous() for side, v in x.items()}
  stitch = Stitch(init['stitch'], int(math.isqrt(target.embeddings.num_patches)))
  with torch.no_grad():
    prefix = source_tokens(source, nchw['source'], n)
    tokens = target_final(target, stitch(prefix), n)
    pooled = target.head(tokens)
  rel = lambda ours, ref: float(np.abs(np.asarray(ours) - ref.numpy()).max() / np.abs(ref.numpy()).max())
  lines = [f'stitched final tokens rel err {rel(model.apply(init, x["source"]), tokens):.1e}, '
           f'pooled {rel(model.features(init, x["source"]), pooled):.1e}']

  # The FFM loss, its gradient and one AdamW step (train.make_step: fit's step) on float32 tokens, against torch's.
  trainable, frozen = {'stitch': init['stitch']}, model.frozen(with_source=False)
  batch = {'source': model.net.source_tokens(model.source.params, x['source']),
           'target_final': model.target.forward(model.target.params, x['target'])[0],
           'mask': np.ones(len(indices), np.float32)}
  loss_fn = functools.partial(objectives.ffm_loss, model.net)
  cache = objectives.stitch_inputs(model, {'image': images[indices]}, 'ffm', args.batch)  # fit's bf16 tokens
  cached_loss = float(loss_fn(trainable, frozen, cache | {'mask': batch['mask']}))
  grads = jax.grad(loss_fn)(trainable, frozen, batch)['stitch']
  stepped, _, loss = train.make_step(loss_fn)(trainable, optax.adamw(args.lr).init(trainable), frozen, batch,
                                              train.hyperparameters(args.lr, WEIGHT_DECAY))
  with torch.no_grad():
    reference = target_reference(target, nchw['target'])
  torch_loss = F.mse_loss(target_final(target, stitch(prefix), n), reference)
  torch_loss.backward()
  torch.optim.AdamW(stitch.parameters(), lr=args.lr, weight_decay=WEIGHT_DECAY).step()
  layers = {name: getattr(stitch, name) for name in ('fc1', 'fc2')}
  grad_err = max(rel(grads[k]['kernel'], layer.weight.grad.T) for k, layer in layers.items())
  # Adam's first step is lr * g / (|g| + 1e-8): where |g| is near 1e-8, float32 rounding of g moves it by up to lr.
  conditioned = [(np.abs(np.asarray(stepped['stitch'][k]['kernel']) - layer.weight.detach().numpy().T),
                  np.abs(np.asarray(grads[k]['kernel'])) > 1e-6) for k, layer in layers.items()]
  step_diff = max(float(d[ok].max()) for d, ok in conditioned)
  small = sum(int((~ok).sum()) for _, ok in conditioned)
  loss, torch_loss = float(loss), torch_loss.item()
  lines.append(f'FFM loss {loss:.7f} stitchjax, {torch_loss:.7f} torch (|diff| {abs(loss - torch_loss):.1e}; '
               f'{cached_loss:.7f} on the bfloat16 tokens stitchjax.fit holds), its gradient rel err {grad_err:.1e}')
  lines.append(f'one AdamW step (lr {args.lr:g}): stitch kernels differ by at most {step_diff:.1e} where the gradient '
               f'exceeds 1e-6 ({small} of {sum(ok.size for _, ok in conditioned)} entries do not)')
  return '; '.join(lines)


def row(clock: Clock, base: Clock) -> str:
  seconds = lambda values: ' / '.join(f'{s:.1f}' for s in values)
  first_step = 'n/a' if clock.first_step is None else f'{clock.first_step:.1f}'
  return (f'| {clock.name} | {clock.wall:.1f} | {clock.wall / base.wall:.2f}x | {clock.first_epoch_starts:.1f} | '
          f'{first_step} | {clock.records[0]["at"]:.1f} | {seconds(clock.epoch_seconds("ffm"))} | {clock.switch:.1f} | '
          f'{seconds(clock.epoch_seconds("tlt"))} | {clock.ffm_val_mse:.4f} | {100 * clock.val_accuracy:.1f}% |')


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--size', default='S', choices=sorted(fwd.SIZES) + ['mini'],
                 help=f'a DINOv2 -> SigLIP pair at these widths and {IMAGE_SIZE} px with random weights, or the '
                      "demo's mini-VFMs")
  p.add_argument('--layer', type=int, default=None, help='the stitch point n; default: half the depth')
  p.add_argument('--epochs', type=int, default=3, help='per stage')
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--lr', type=float, default=1e-3)
  p.add_argument('--train', type=int, default=512, help='training images')
  p.add_argument('--val', type=int, default=256, help='validation images')
  p.add_argument('--remat', action='store_true', help="stitchjax.stitch(..., remat=True) (the API's default: False)")
  p.add_argument('--jobs', default='stitchjax,torch-naive,torch-cached', help='a comma list; stitchjax always runs')
  p.add_argument('--fashion-mnist', default=data.FASHION_MNIST_ROOT)
  p.add_argument('--cores', type=int, default=None, help='pin the process (both runtimes) to this many cores')
  args = p.parse_args()
  unknown = set(args.jobs.split(',')) - {'stitchjax', *TORCH_JOBS}
  if unknown:
    p.error(f'--jobs: unknown {sorted(unknown)}; the jobs are stitchjax, {", ".join(TORCH_JOBS)}')
  if args.cores:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  torch.manual_seed(SEED)

  (source, source_bb), (target, target_bb) = backbones(args.size)
  for module in (source, target):
    module.requires_grad_(False)
  layer = args.layer or source_bb.config.depth // 2
  model = stitchjax.stitch(source_bb, target_bb, layer=layer, kind='mlp', num_classes=NUM_CLASSES, remat=args.remat)
  init = model.init(jax.random.key(SEED))
  splits = fashion_mnist(args.fashion_mnist, {'train': args.train, 'val': args.val})

  started = time.perf_counter()  # the torch jobs' pixels: stitchjax's preprocessing, once, counted in both
  pixels = {split: {'source': source_bb.preprocess(s['image']), 'target': target_bb.preprocess(s['image'])}
            for split, s in splits.items()}
  nchw = {split: {side: torch.from_numpy(x).permute(0, 3, 1, 2).contiguous() for side, x in p.items()}
          for split, p in pixels.items()}
  labels = {split: torch.from_numpy(s['label']).long() for split, s in splits.items()}
  preprocessing = time.perf_counter() - started

  clocks = [stitchjax_job(model, init, splits, args)]
  for name in TORCH_JOBS:
    if name in args.jobs.split(','):
      clock = Clock(name, time.perf_counter() - preprocessing)
      clocks.append(torch_job(clock, name == 'torch-cached', source, target, layer, init, nchw, labels, args))
  checked = check(model, init, source, target, pixels['train'], splits['train']['image'], args)

  src_cfg, tgt_cfg = source_bb.config, target_bb.config
  print(fwd.header())
  print(f'# python {" ".join(sys.argv)}: {src_cfg.family} {src_cfg.dim}x{src_cfg.depth}/{src_cfg.patch_size} '
        f'-> {tgt_cfg.family} {tgt_cfg.dim}x{tgt_cfg.depth}/{tgt_cfg.patch_size} at {src_cfg.image_size}/'
        f'{tgt_cfg.image_size} px ({"the mini-VFMs" if args.size == "mini" else "random weights"}), mlp stitch at '
        f'block {layer}; Fashion-MNIST {args.train} train / {args.val} val, {NUM_CLASSES} classes; ffm_tlt, '
        f'{args.epochs} + {args.epochs} epochs, AdamW lr {args.lr:g} wd {WEIGHT_DECAY:g}, batch {args.batch}; torch '
        f'float32, {torch.get_num_threads()} threads, its preprocessing ({preprocessing:.2f} s) counted in both '
        f'torch rows; stitchjax holds bfloat16 tokens' + (', remat' if args.remat else ''))
  print('# seconds from the job\'s start; an epoch is its training and validation; switch: last FFM epoch end -> '
        'first TLT epoch start; FFM val MSE and val accuracy: the best epoch\'s, which each job returns')
  print('| job | wall s | / stitchjax | epoch 1 starts | step 1 ends | epoch 1 ends | FFM epochs s | switch s | '
        'TLT epochs s | FFM val MSE | val accuracy |')
  print('|' + '---|' * 11)
  base = clocks[0]
  for clock in clocks:
    print(row(clock, base))
  ratios = [f'{c.name} FFM {c.epoch_seconds("ffm")[-1] / base.epoch_seconds("ffm")[-1]:.2f}x, '
            f'TLT {c.epoch_seconds("tlt")[-1] / base.epoch_seconds("tlt")[-1]:.2f}x' for c in clocks[1:]]
  if ratios:
    print(f'# last epoch of each stage, torch / stitchjax: {"; ".join(ratios)}')
  print(f'# check, first training batch in float32: {checked}')


if __name__ == '__main__':
  main()
