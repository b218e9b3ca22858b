"""python -m convert SRC OUT [--image-size N] [--force]: any supported checkpoint -> stitchjax export (orbax + JSON)."""
import argparse
import sys

from convert.common import CheckpointError
from stitchjax import backbone


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m convert', description=__doc__)
  parser.add_argument('src', help='transformers or timm directory, torch-hub .pth, big_vision .npz, stitchjax export, '
                      'or a bare timm state dict with --architecture')
  parser.add_argument('out', help='output directory (must not exist unless --force)')
  parser.add_argument('--image-size', type=int, default=None, help='resample position embeddings to this size')
  parser.add_argument('--heads', type=int, default=None,
                      help='attention heads, for torch-hub DINOv2 .pth files of a non-standard width')
  parser.add_argument('--architecture', default=None,
                      help='the timm architecture of a bare timm state dict (e.g. vit_large_patch14_dinov2)')
  parser.add_argument('--force', action='store_true', help='replace an existing output directory')
  args = parser.parse_args(argv)
  try:
    bb = backbone.load_backbone(args.src, image_size=args.image_size, heads=args.heads,
                                 architecture=args.architecture)
    backbone.save_backbone(bb, args.out, overwrite=args.force)
  except (CheckpointError, ValueError, FileExistsError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  c = bb.config
  print(f'wrote {args.out}: {c.family} depth={c.depth} dim={c.dim} patch={c.patch_size} image_size={c.image_size}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
