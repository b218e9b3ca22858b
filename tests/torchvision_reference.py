"""Writes tests/data/torchvision: what transformers' torchvision image processors (BitImageProcessor for
DINOv2, CLIPImageProcessor, SiglipImageProcessor, Siglip2ImageProcessor) and torchvision's resize make
of photographs and synthetic images, for tests/test_preprocess.py.

These processors need torchvision, which CI cannot install (tests/timm_reference.py says why); so the
tests read their outputs from these files, and also compare against them live wherever torchvision
imports. Regenerate with a Python that has them, on an x86 CPU with AVX2 or AVX-512 or on aarch64,
where torchvision resizes uint8 images itself (stitchjax/preprocess.py; the data were written with
torch 2.14.1, torchvision 0.29.1, transformers 5.23.0, matplotlib 3.11.2 and Pillow 13.0):

    pip install torch torchvision transformers matplotlib
    python tests/torchvision_reference.py tests/data/torchvision

Written, every image a PNG:
- inputs/<image>.png: the images. Photographs: crops of matplotlib's grace_hopper.jpg, resized with PIL
  to odd shapes; synthetic: random uint8 noise of odd shapes, tiny, wide and tall (one grayscale).
- processors/<case>__<image>.png: a processor's pixels before its rescale and normalisation (it
  resizes and crops uint8 images), and levels.npz: per case, the float32 pixel value it gives each uint8
  level of each channel, (256, 3). The processor's output is levels[png, channel], which `write` checks.
- resize/<mode>__<image>__<h>x<w>.png: torchvision's resize(antialias=True) of the uint8 image.
"""
import pathlib
import sys

import numpy as np
from PIL import Image

IMAGENET = {'image_mean': [0.485, 0.456, 0.406], 'image_std': [0.229, 0.224, 0.225]}
CLIP = {'image_mean': [0.48145466, 0.4578275, 0.40821073], 'image_std': [0.26862954, 0.26130258, 0.27577711]}
HALF = {'image_mean': [0.5, 0.5, 0.5], 'image_std': [0.5, 0.5, 0.5]}

# name -> (H, W, crop box (left, top, right, bottom) of grace_hopper.jpg, 512 x 600), resized to (H, W) with PIL.
PHOTOS = {
    'hopper_37x53': (37, 53, (0, 0, 512, 600)),
    'hopper_301x173': (301, 173, (140, 40, 400, 490)),
    'hopper_333x500': (333, 500, (6, 90, 506, 423)),  # a crop, not resized
    'hopper_97x97': (97, 97, (110, 60, 410, 360)),
}
# name -> shape; seeded noise. Tiny, upscaled and downscaled, wide, tall, grayscale.
SYNTHETIC = {
    'noise_1x1': (1, 1, 3), 'noise_2x3': (2, 3, 3), 'noise_5x7': (5, 7, 3), 'noise_9x120': (9, 120, 3),
    'noise_120x9': (120, 9, 3), 'noise_33x33': (33, 33, 3), 'noise_64x64': (64, 64, 3),
    'noise_100x80': (100, 80, 3), 'noise_20x300': (20, 300, 3), 'gray_61x90': (61, 90),
}
ODD = ['hopper_37x53', 'hopper_301x173', 'hopper_333x500', 'noise_1x1', 'noise_2x3', 'noise_9x120', 'noise_120x9',
       'noise_100x80', 'gray_61x90']
SQUARE = ['hopper_97x97', 'noise_1x1', 'noise_33x33', 'noise_64x64']  # NaFlex fills its patch budget exactly
# name -> (stitchjax family, image size, preprocessor_config.json as for_family reads it, images). The first
# three are the hub configs of facebook/dinov2-large, openai/clip-vit-large-patch14-336 (whose json still
# stores int sizes) and google/siglip2-so400m-patch14-384, on a photograph each or two (their outputs are
# large files); the others are other sizes and settings, on every odd-shaped image.
PROCESSORS = {
    'dinov2_large': ('dinov2', 224, {'image_processor_type': 'BitImageProcessor', 'size': {'shortest_edge': 256},
                                     'crop_size': {'height': 224, 'width': 224}, 'do_center_crop': True,
                                     'resample': 3, **IMAGENET}, ['hopper_301x173', 'hopper_333x500']),
    'clip_l336': ('clip', 336, {'size': 336, 'crop_size': 336, 'do_center_crop': True, 'resample': 3, **CLIP},
                  ['hopper_333x500']),
    'siglip2_so400m_384': ('siglip', 384, {'image_processor_type': 'SiglipImageProcessor',
                                           'size': {'height': 384, 'width': 384}, 'resample': 2, **HALF},
                           ['hopper_37x53']),
    'dinov2_64': ('dinov2', 64, {'image_processor_type': 'BitImageProcessor', 'size': {'shortest_edge': 73},
                                 'crop_size': {'height': 64, 'width': 64}, 'do_center_crop': True, 'resample': 3,
                                 **IMAGENET}, ODD),
    # The crop is larger than the resized image: torchvision pads floor(11 / 2) = 5 rows before.
    'dinov2_pad': ('dinov2', 64, {'image_processor_type': 'BitImageProcessor', 'size': {'shortest_edge': 53},
                                  'crop_size': {'height': 64, 'width': 64}, 'do_center_crop': True, 'resample': 3,
                                  **IMAGENET}, ODD),
    'clip_48': ('clip', 48, {'size': {'shortest_edge': 48}, 'crop_size': 48, 'do_center_crop': True,
                             'resample': 3, **CLIP}, ODD),
    'clip_bilinear_unnormalised': ('clip', 40, {'size': {'shortest_edge': 40}, 'crop_size': 40, 'resample': 2,
                                                'do_center_crop': True, 'do_normalize': False}, ODD),
    'siglip_v1_40': ('siglip', 40, {'image_processor_type': 'SiglipImageProcessor', 'size': {'height': 40, 'width': 40},
                                    'resample': 3, **HALF}, ODD),
    'siglip2_naflex_48': ('siglip', 48, {'image_processor_type': 'Siglip2ImageProcessor', 'patch_size': 16,
                                         'max_num_patches': 9, 'resample': 2, **HALF}, SQUARE),
}
# (image, output (H, W)), each in both modes: up, down, by a little, one axis only, and over many taps (a support of
# 100 input pixels, where the int16 weights reach their largest precision).
RESIZES = [('noise_1x1', (5, 3)), ('noise_2x3', (17, 11)), ('noise_5x7', (61, 47)), ('noise_64x64', (17, 23)),
           ('noise_100x80', (97, 81)), ('noise_33x33', (33, 65)), ('noise_33x33', (7, 33)), ('noise_9x120', (31, 13)),
           ('noise_120x9', (13, 31)), ('noise_20x300', (3, 2)), ('hopper_333x500', (41, 59))]
MODES = ('bilinear', 'bicubic')
# transformers' field names that are not processor arguments.
NOT_ARGUMENTS = ('image_processor_type', 'processor_class', 'feature_extractor_type')


def processor_arguments(config: dict) -> dict:
  return {k: v for k, v in config.items() if k not in NOT_ARGUMENTS}


def processor_class(family: str, config: dict) -> str:
  """The transformers processor class a case names (its torchvision one; the PIL one adds 'Pil')."""
  default = {'dinov2': 'BitImageProcessor', 'clip': 'CLIPImageProcessor', 'siglip': 'SiglipImageProcessor'}
  return config.get('image_processor_type', default[family])


def pixels(processor, image: np.ndarray, size: int):
  """One image through a transformers processor: (size, size, 3) channels last, whatever the backend, and
  NaFlex's patches put back in place. Grayscale goes in as a PIL 'L' image, through do_convert_rgb."""
  if image.ndim == 2:
    out = processor(Image.fromarray(image), return_tensors='np')['pixel_values'][0]
  else:
    out = processor(image, input_data_format='channels_last', return_tensors='np')['pixel_values'][0]
  if out.ndim == 2:  # Siglip2's (patches, 16 * 16 * 3), row by row
    grid, p = size // 16, 16
    return out.reshape(grid, grid, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(size, size, 3)
  return out.transpose(1, 2, 0)


def read(root: pathlib.Path, name: str) -> np.ndarray:
  return np.array(Image.open(root / f'{name}.png'))  # writable: torch warns of read-only arrays


def resizes_uint8_itself() -> bool:
  """Whether torchvision, here, resizes uint8 images itself in both modes (stitchjax/preprocess.py)."""
  from torchvision.transforms.v2 import InterpolationMode
  from torchvision.transforms.v2.functional import _geometry
  return all(_geometry._do_native_uint8_resize_on_cpu(mode)
             for mode in (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC))


def _inputs() -> dict:
  import matplotlib.cbook
  hopper = Image.open(matplotlib.cbook.get_sample_data('grace_hopper.jpg')).convert('RGB')
  out = {}
  for name, (h, w, box) in PHOTOS.items():
    crop = hopper.crop(box)
    out[name] = np.array(crop if crop.size == (w, h) else crop.resize((w, h), Image.LANCZOS))
  rng = np.random.default_rng(0)
  out |= {name: rng.integers(0, 256, shape, dtype=np.uint8) for name, shape in SYNTHETIC.items()}
  return out


def _write_png(path: pathlib.Path, image: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(image).save(path, optimize=True)


def write(root: pathlib.Path) -> None:
  import torch
  import torchvision
  import transformers
  from torchvision.transforms.v2 import functional as tvF
  assert resizes_uint8_itself(), 'torchvision resizes a float copy of uint8 images on this CPU: write elsewhere'
  inputs = _inputs()
  for name, image in inputs.items():
    _write_png(root / 'inputs' / f'{name}.png', image)
  levels = {}
  for case, (family, size, config, images) in PROCESSORS.items():
    cls = getattr(transformers, processor_class(family, config))
    processor = cls(**processor_arguments(config))
    raw = cls(**processor_arguments(config) | {'do_rescale': False, 'do_normalize': False})
    assert processor.backend == 'torchvision', f'{cls.__name__} is {processor.backend}: torchvision does not import'
    # The rescale and normalisation act on each uint8 value alone: the processor's own, on every level.
    ramp = torch.arange(256, dtype=torch.uint8).expand(1, 3, 256).reshape(1, 3, 256, 1)
    p = processor
    table = p.rescale_and_normalize(ramp, p.do_rescale, p.rescale_factor, p.do_normalize, tuple(p.image_mean),
                                    tuple(p.image_std))
    levels[case] = table.to(torch.float32).numpy()[0, :, :, 0].T
    for name in images:
      resized = pixels(raw, inputs[name], size)
      assert resized.dtype == np.uint8 and resized.shape == (size, size, 3), (case, name, resized.dtype)
      np.testing.assert_array_equal(levels[case][resized, np.arange(3)], pixels(processor, inputs[name], size))
      _write_png(root / 'processors' / f'{case}__{name}.png', resized)
  np.savez_compressed(root / 'levels.npz', **levels)
  for mode in MODES:
    for name, (h, w) in RESIZES:
      image = torch.from_numpy(inputs[name]).permute(2, 0, 1)
      out = tvF.resize(image, [h, w], interpolation=tvF.InterpolationMode[mode.upper()], antialias=True)
      assert out.dtype == torch.uint8
      _write_png(root / 'resize' / f'{mode}__{name}__{h}x{w}.png', out.permute(1, 2, 0).numpy())
  print(f'torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), torchvision '
        f'{torchvision.__version__}, transformers {transformers.__version__}: {root}')


if __name__ == '__main__':
  write(pathlib.Path(sys.argv[1]))
