"""Parity on the machine at hand: stitchjax against transformers on the same device, before any timing.

    python benchmarks/parity.py                       # every family, ViT-L at 224 px, float32 and bfloat16
    python benchmarks/parity.py --size S --image-size 56

Random weights with each family's real layout (benchmarks/forward.py); the reference is
transformers in float32 on the same device (TF32 off, so float32 means float32). The
relative error max|ours - ref| / max|ref| is measured at the embedding, at a few block
boundaries, at the final norm and at the pooled output, as the parity tests do:
in float32 along the whole forward from the pixels; in bfloat16 compute (float32
weights) block by block from the reference's own inputs, so that each number measures one
block's rounding, not 24 blocks' drift. Bars: 1e-5 in float32, 2e-2 in bfloat16. Prints
one markdown row per family and precision and exits non-zero if any bar is missed, so that
a suite stops before timing a wrong model.
"""
import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch

import forward as fwd

BARS = {'float32': 1e-5, 'bfloat16': 2e-2}


def rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def check(family: str, size: str, image_size: int, dtype: str, batch: int) -> tuple[dict, float]:
  """{boundary: relative error} for one family and compute precision, and the worst of them."""
  model, bb = fwd.load_pair(family, size, image_size, dtype)
  model = model.to('cuda' if jax.default_backend() == 'gpu' else 'cpu')
  x = np.random.default_rng(0).standard_normal((batch, image_size, image_size, 3)).astype(np.float32)
  with torch.inference_mode():
    ref = model(torch.from_numpy(x).permute(0, 3, 1, 2).to(model.device), output_hidden_states=True)
    # CLIP's last_hidden_state is not normed; stitchjax's `final` is post_layernorm on all tokens.
    last = model.post_layernorm(ref.last_hidden_state) if family == 'clip' else ref.last_hidden_state
  hidden = [h.cpu().numpy() for h in ref.hidden_states]
  last, pooled = last.cpu().numpy(), ref.pooler_output.cpu().numpy()
  params, depth = bb.params, bb.config.depth
  tokens = bb.embed(params, jnp.asarray(x))
  errs = {'embed': rel_err(tokens, hidden[0])}
  chained = dtype == 'float32'
  for n in sorted({1, depth // 2, depth}):
    out = bb.blocks(params, tokens, 0, n) if chained else bb.blocks(params, jnp.asarray(hidden[n - 1]), n - 1, n)
    errs[f'block {n}'] = rel_err(out, hidden[n])
  final = bb.final(params, bb.blocks(params, tokens, 0, depth) if chained else jnp.asarray(hidden[depth]))
  errs['final'] = rel_err(final, last)
  if bb.config.pool != 'none':
    errs['pool'] = rel_err(bb.pool(params, final if chained else jnp.asarray(last)), pooled)
  del model
  return errs, max(errs.values())


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--family', default='all', help=f'one of {", ".join(fwd.FAMILIES)}, a comma list, or "all"')
  p.add_argument('--size', default='L', choices=sorted(fwd.SIZES))
  p.add_argument('--image-size', type=int, default=224)
  p.add_argument('--batch', type=int, default=2)
  args = p.parse_args()
  jax.config.update('jax_default_matmul_precision', 'highest')
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  families = fwd.FAMILIES if args.family == 'all' else args.family.split(',')
  print(fwd.header())
  print('| family | dtype | worst relative error | bar | at each boundary |')
  print('|---|---|---|---|---|')
  failed = []
  for family in families:
    for dtype, bar in BARS.items():
      errs, worst = check(family, args.size, args.image_size, dtype, args.batch)
      each = ', '.join(f'{k} {v:.1e}' for k, v in errs.items())
      print(f'| {family} {args.size}/{fwd.PATCH[family]} @{args.image_size} | {dtype} | {worst:.2e} | {bar:g} | {each} |',
            flush=True)
      if not worst <= bar:
        failed.append(f'{family} {dtype}')
  if failed:
    sys.exit(f'parity.py: over the bar: {", ".join(failed)}')


if __name__ == '__main__':
  main()
