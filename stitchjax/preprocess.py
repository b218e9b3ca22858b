"""Image preprocessing that matches the transformers processors of each family, and timm's eval transform.

Features are only comparable with the PyTorch models (and stitched layers only
transfer) when the pixels fed to the JAX model are the ones the reference
processor would produce. `Preprocess` reproduces them in numpy + PIL, with no
torch at run time:

    pre = for_family('dinov2', 224)          # or for_family(family, size, json.load(f), 'torchvision')
    pixels = pre(images)                     # uint8 (B, H, W, 3) -> float32 (B, 224, 224, 3)

transformers 5 has two image processors for DINOv2, CLIP and SigLIP/SigLIP2, and
`AutoImageProcessor` gives the torchvision one (BitImageProcessor, CLIPImageProcessor,
SiglipImageProcessor, Siglip2ImageProcessor) whenever torchvision is installed, the PIL one
(BitImageProcessorPil, ...) otherwise. Their pixels differ: at the hub configs, on photographs,
about half the values by one or two uint8 levels, up to 3.5e-2 after normalisation (DINOv2),
3.0e-2 (CLIP), 7.8e-3 (SigLIP2; tests/torchvision_reference.py's images). `for_family`'s
`processor_backend` picks one, by AutoImageProcessor's name for it (its `backend=`): 'pil' or
'torchvision'. The default is 'pil': it is bit-exact on every CPU, it is what transformers 4
gave by default (the processors of the paper's time), and the workdirs and feature caches
already computed, which key on these pixels, stay valid. To match the features of a
transformers 5 pipeline on a machine with torchvision, set processor_backend='torchvision'.
DINOv3 has only a torchvision processor, which rescales to float before it resizes: both
values give it. timm checkpoints have one eval transform (`from_timm`).

The backends (`Preprocess.backend`, which workdirs and feature caches key on):

* 'pil' (BitImageProcessorPil for DINOv2, CLIPImageProcessorPil,
  SiglipImageProcessorPil, Siglip2ImageProcessorPil): PIL resize of the uint8
  image, center crop, rescale (in float64, then cast to float32), normalise in
  float32. Bit-exact with transformers: the PIL call is the same one.
* 'torch_uint8' (BitImageProcessor, CLIPImageProcessor, SiglipImageProcessor,
  Siglip2ImageProcessor: transformers' TorchvisionBackend): torchvision's
  antialiased resize of the uint8 image, center crop, then the rescale fused
  into the normalisation, (x - mean / rescale_factor) / (std / rescale_factor)
  in float32. The resize is aten's uint8 kernel, a port of Pillow-SIMD that
  differs from PIL: weights in double scaled to int16 at a precision set by the
  largest weight, int32 sums rounded and clamped to uint8 after each pass,
  width then height. Bit-exact wherever torchvision resizes the uint8 tensor
  itself (integer sums, then a subtraction and a division: no multiply-add for
  a vector kernel to fuse): bicubic on every CPU, bilinear on x86 CPUs with
  AVX2 or AVX-512 and on aarch64 (torchvision 0.29; aten's AVX2 and portable
  kernels compute the same integers). Elsewhere torchvision resizes a float32
  copy and rounds it back, which moves some pixels by one level (1/255 before
  normalisation): bilinear on an x86 CPU without AVX2 (or with
  ATEN_CPU_CAPABILITY=default), and both modes when the processor runs on a
  GPU (`device='cuda'`).
* 'torch_aa' (DINOv3ViTImageProcessor, a torchvision processor): rescale to
  float32 first, then torch's antialiased bilinear/bicubic interpolate
  (what torchvision's resize calls for float tensors), center crop, normalise.
  The interpolation weights are computed exactly as aten's CPU kernel does
  (float32, same rounding) and the taps are summed in its order, which is
  bit-exact with torch's portable kernel (ATEN_CPU_CAPABILITY=default). Its
  AVX2/AVX-512 builds fuse some of those multiply-adds (FMA), so there outputs
  differ by an ulp or so: measured max 8e-7 (bilinear), 5e-6 (bicubic) after
  normalisation.
* 'torchvision' (timm's eval transform, `from_timm`): the same PIL resize, then
  torchvision's center crop (offsets rounded, not floored) and to_tensor (a
  float32 division by 255), normalise in float32. Bit-exact with timm.
"""
import dataclasses
import math

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)

RESIZES = ('shortest_edge', 'square')
BACKENDS = ('pil', 'torch_uint8', 'torch_aa', 'torchvision')
# transformers' names for its two kinds of image processor (AutoImageProcessor's `backend=`); see the module docstring.
PROCESSOR_BACKENDS = ('pil', 'torchvision')
# PIL's enum values, which are also what preprocessor_config.json stores as `resample`.
PIL_RESAMPLE = {'nearest': 0, 'lanczos': 1, 'bilinear': 2, 'bicubic': 3, 'box': 4, 'hamming': 5}
AA_RESAMPLE = {'bilinear': 2, 'bicubic': 4}  # modes torch antialiases -> taps without antialias.
FAMILIES = ('dinov2', 'dinov3', 'clip', 'siglip')
_BLOCK = 1 << 16  # values summed at a time by the resize kernels: their int32/float32 sums fit in L2


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Resize, optional center crop, rescale and normalise, as one reference processor does it."""
  resize: str  # 'shortest_edge': the short side becomes `size`; 'square': the image becomes size x size.
  size: int
  resample: str  # a key of PIL_RESAMPLE ('pil', 'torchvision') or of AA_RESAMPLE ('torch_uint8', 'torch_aa').
  backend: str  # one of BACKENDS, see the module docstring.
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  crop: int | None = None  # side of the center crop; None: no crop.
  rescale_factor: float = 1 / 255

  def __post_init__(self):
    _set = lambda name, value: object.__setattr__(self, name, value)
    _set('mean', _floats3(self.mean, 'Preprocess: mean'))
    _set('std', _floats3(self.std, 'Preprocess: std'))
    _set('size', _positive_int(self.size, 'Preprocess: size'))
    if self.crop is not None:
      _set('crop', _positive_int(self.crop, 'Preprocess: crop'))
    _set('rescale_factor', float(self.rescale_factor))
    valid = AA_RESAMPLE if self.backend in ('torch_uint8', 'torch_aa') else PIL_RESAMPLE
    checks = [
        (self.resize in RESIZES, f'resize={self.resize!r} is not one of {RESIZES}'),
        (self.backend in BACKENDS, f'backend={self.backend!r} is not one of {BACKENDS}'),
        (self.resample in valid,
         f'resample={self.resample!r} is not one of {tuple(valid)} for backend={self.backend!r}'),
        (all(s != 0 for s in self.std), f'std={self.std} has a zero'),
        (self.rescale_factor > 0, f'rescale_factor={self.rescale_factor} must be positive'),
        (self.backend != 'torchvision' or self.rescale_factor == 1 / 255, 'torchvision rescales by 1/255 only'),
        # Without a crop the short-side resize keeps the aspect ratio, so batches would not be square.
        (self.resize != 'shortest_edge' or self.crop is not None, "resize='shortest_edge' needs a crop"),
    ]
    for ok, message in checks:
      if not ok:
        raise ValueError(f'Preprocess: {message}')

  @property
  def output_size(self) -> int:
    return self.crop if self.crop is not None else self.size

  def __call__(self, images) -> np.ndarray:
    """images: uint8 (B, H, W, 3), or a list of uint8 (H, W, 3) / grayscale (H, W) arrays of any sizes.

    Returns float32 (B, S, S, 3), channels last, S = output_size.
    """
    if isinstance(images, np.ndarray):
      if images.ndim != 4:
        raise ValueError(f'Preprocess: an array batch must be (B, H, W, C), got shape {images.shape}; '
                         'pass a single image as [image]')
      images = list(images)
    out = np.empty((len(images), self.output_size, self.output_size, 3), np.float32)
    for i, image in enumerate(images):
      out[i] = self._one(_to_rgb(image))
    return out

  def _one(self, image: np.ndarray) -> np.ndarray:
    height, width = self._resized_shape(*image.shape[:2])
    mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
    if self.backend in ('pil', 'torchvision'):
      # transformers always goes through PIL, even when the size does not change.
      pil = Image.fromarray(np.ascontiguousarray(image))
      image = np.asarray(pil.resize((width, height), resample=PIL_RESAMPLE[self.resample]))
      transformers = self.backend == 'pil'
      if self.crop is not None:
        image = _center_crop(image, self.crop, pad_before_rounds_up=transformers, round_offset=not transformers)
      # transformers' numpy `rescale` multiplies in float64 and only then casts; torchvision divides in float32.
      x = (image.astype(np.float64) * self.rescale_factor).astype(np.float32) if transformers else \
          image.astype(np.float32) / np.float32(255)
    elif self.backend == 'torch_uint8':
      image = uint8_resize(image, height, width, self.resample)
      if self.crop is not None:
        image = _center_crop(image, self.crop, pad_before_rounds_up=False)
      x = image.astype(np.float32)
      if (self.mean, self.std) == ((0.0,) * 3, (1.0,) * 3):  # do_normalize=False (for_family): only the rescale
        return x * np.float32(self.rescale_factor)
      # transformers fuses the rescale into the normalisation: mean and std times 1 / rescale_factor, in float32.
      mean, std = mean * np.float32(1 / self.rescale_factor), std * np.float32(1 / self.rescale_factor)
    else:  # 'torch_aa'
      # torch multiplies the uint8 tensor by the Python float in float32.
      x = image.astype(np.float32) * np.float32(self.rescale_factor)
      x = antialias_resize(x, height, width, self.resample)
      if self.crop is not None:
        x = _center_crop(x, self.crop, pad_before_rounds_up=False)
    return (x - mean) / std

  def _resized_shape(self, height: int, width: int) -> tuple[int, int]:
    if self.resize == 'square':
      return self.size, self.size
    # transformers' get_resize_output_image_size(default_to_square=False): the long side truncates.
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(self.size * long / short)
    return (new_long, self.size) if width <= height else (self.size, new_long)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d['mean'], d['std'] = list(self.mean), list(self.std)
    return d

  @classmethod
  def from_dict(cls, d: dict) -> 'Preprocess':
    fields = dataclasses.fields(cls)
    unknown = sorted(set(d) - {f.name for f in fields})
    if unknown:
      raise ValueError(f'Preprocess: unknown fields {unknown}')
    required = [f.name for f in fields if f.default is dataclasses.MISSING]
    missing = [name for name in required if name not in d]
    if missing:
      raise ValueError(f'Preprocess: missing fields {missing}')
    return cls(**d)


def _to_rgb(image) -> np.ndarray:
  """(H, W) or (H, W, 1) grayscale -> (H, W, 3), like transformers' do_convert_rgb."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f'Preprocess: images must be uint8, got {image.dtype}')
  if image.ndim == 2:
    image = image[:, :, None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f'Preprocess: an image must be (H, W), (H, W, 1) or (H, W, 3), got shape {image.shape}')
  return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def _center_crop(x: np.ndarray, crop: int, pad_before_rounds_up: bool, round_offset: bool = False) -> np.ndarray:
  """Center crop of an (H, W, C) array, zero-padding sides shorter than `crop`.

  transformers and torchvision's tensor crop take floor((n - crop) / 2) as the crop
  offset, torchvision's PIL crop round((n - crop) / 2) (Python's, halves to even). When
  padding, transformers' numpy center_crop puts ceil(d / 2) zeros before the image and
  torchvision floor(d / 2).
  """
  for axis in (0, 1):
    n = x.shape[axis]
    if n >= crop:
      start = int(round((n - crop) / 2.0)) if round_offset else (n - crop) // 2
      x = x[start:start + crop] if axis == 0 else x[:, start:start + crop]
    else:
      before = (crop - n + 1) // 2 if pad_before_rounds_up else (crop - n) // 2
      pad = [(0, 0)] * x.ndim
      pad[axis] = (before, crop - n - before)
      x = np.pad(x, pad)
  return x


def _aa_filter(resample: str, x: np.ndarray) -> np.ndarray:
  """aten's antialias filters (HelperInterpLinear/Cubic::aa_filter), in x's precision (float32 or double)."""
  t = x.dtype.type
  x = np.abs(x)
  one = t(1)
  if resample == 'bilinear':
    return np.where(x < one, one - x, t(0))
  a = t(-0.5)  # PIL's and torch's antialias bicubic coefficient.
  near = ((a + 2) * x - (a + 3)) * x * x + one
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x < one, near, np.where(x < 2, far, t(0)))


def _aa_weights(n_in: int, n_out: int, resample: str, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
  """Taps (n_out, K) and weights (n_out, K) of torch's antialiased interpolate along one axis.

  Follows aten's `_compute_index_ranges_weights` (align_corners=False) step by
  step, including which intermediates are of the weights' type and which double,
  so the weights match bit for bit: float32 for float32 images, double for
  uint8 images (`_uint8_weights`).
  """
  t = np.dtype(dtype).type
  interp_size = AA_RESAMPLE[resample]
  scale = t(n_in) / t(n_out)
  downsampling = scale >= 1
  support = t(interp_size * 0.5 * float(scale) if downsampling else interp_size * 0.5)
  n_taps = int(math.ceil(support)) * 2 + 1
  invscale = float(t(1.0 / float(scale))) if downsampling else 1.0
  center = ((np.arange(n_out) + 0.5) * float(scale)).astype(t)
  # C++ casts to int64 by truncation toward zero, as astype does.
  xmin = np.maximum(((center - support).astype(np.float64) + 0.5).astype(np.int64), 0)
  xmax = np.minimum(((center + support).astype(np.float64) + 0.5).astype(np.int64), n_in)
  xsize = np.clip(xmax - xmin, 0, n_taps)
  taps = xmin[:, None] + np.arange(n_taps)
  dist = (taps.astype(t) - center[:, None]).astype(np.float64) + 0.5
  w = _aa_filter(resample, (dist * invscale).astype(t))
  w = np.where(np.arange(n_taps) < xsize[:, None], w, t(0))
  total = np.zeros(n_out, t)
  for k in range(n_taps):  # the kernel sums sequentially.
    total += w[:, k]
  w = np.where(total[:, None] != 0, w / np.where(total == 0, 1, total)[:, None], w)
  return np.minimum(taps, n_in - 1), w


def _uint8_weights(n_in: int, n_out: int, resample: str) -> tuple[np.ndarray, np.ndarray, int]:
  """Taps (n_out, K), int16 weights (n_out, K, as int32) and their precision in bits, of torch's antialiased
  interpolate of uint8 images along one axis (aten's `_compute_index_ranges_int16_weights`).

  The double weights become round(w * 2**precision), halves away from zero, at the largest precision
  (at most 22) at which the largest weight still rounds below 2**15.
  """
  taps, w = _aa_weights(n_in, n_out, resample, np.float64)
  largest = w.max()
  precision = next((p for p in range(22) if int(0.5 + largest * (1 << (p + 1))) >= 1 << 15), 22)
  scaled = w * (1 << precision)
  return taps, np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32), precision


def _tap_sums(x: np.ndarray, taps: np.ndarray, weights: np.ndarray, out: np.ndarray) -> np.ndarray:
  """out += sum_k x[taps[:, k]] * weights[:, k] over axis 0 of x, added in the kernels' tap order (a row's
  zero weights past its taps add nothing), a block of output rows at a time so that the sums stay in cache."""
  rows = max(1, _BLOCK // x[0].size)
  shape = (-1,) + (1,) * (x.ndim - 1)
  for start in range(0, len(out), rows):
    block, stop = out[start:start + rows], start + rows
    for k in range(weights.shape[1]):
      block += x[taps[start:stop, k]] * weights[start:stop, k].reshape(shape)
  return out


def _separable(image: np.ndarray, height: int, width: int, resize_rows) -> np.ndarray:
  """aten's separable resize of an (H, W, C) image: width first, then height, skipping an axis whose size does
  not change (the order matters for rounding). resize_rows(x, n) resamples axis 0 of a contiguous x to n."""
  if image.shape[1] != width:
    image = resize_rows(np.ascontiguousarray(image.transpose(1, 2, 0)), width).transpose(2, 0, 1)
  if image.shape[0] != height:
    image = resize_rows(np.ascontiguousarray(image), height)
  return image


def antialias_resize(x: np.ndarray, height: int, width: int, resample: str) -> np.ndarray:
  """torch.nn.functional.interpolate(antialias=True, align_corners=False) of a float32 (H, W, C) array."""
  def resize_rows(rows, n):
    taps, w = _aa_weights(len(rows), n, resample)
    return _tap_sums(rows, taps, w, np.zeros((n,) + rows.shape[1:], np.float32))
  return _separable(x, height, width, resize_rows)


def uint8_resize(image: np.ndarray, height: int, width: int, resample: str) -> np.ndarray:
  """torchvision's resize(antialias=True) of a uint8 (H, W, C) image where it stays uint8 (module docstring):
  aten's uint8 kernels, sums of pixel x int16 weight in int32 from 2**(precision - 1), shifted right by the
  precision and clamped to uint8 after each pass. Integer sums do not depend on their order, so AVX2's and
  the portable kernel agree."""
  def resize_rows(rows, n):
    taps, k, precision = _uint8_weights(len(rows), n, resample)
    sums = _tap_sums(rows, taps, k, np.full((n,) + rows.shape[1:], 1 << (precision - 1), np.int32))
    return np.clip(sums >> precision, 0, 255).astype(np.uint8)
  return _separable(image, height, width, resize_rows)


# Class attributes of the transformers processors. As in transformers, a key a
# preprocessor_config.json leaves out (or sets to null) takes these values.
_COMMON = dict(do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True)
_BIT_CLIP = dict(_COMMON, backend='pil', resample=3, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                 size={'shortest_edge': 224}, default_to_square=False,
                 crop_size={'height': 224, 'width': 224}, do_center_crop=True)
_CLASS_DEFAULTS = {
    'BitImageProcessor': _BIT_CLIP,
    'CLIPImageProcessor': _BIT_CLIP,
    'SiglipImageProcessor': dict(_COMMON, backend='pil', resample=3, image_mean=HALF, image_std=HALF,
                                 size={'height': 224, 'width': 224}, default_to_square=False),
    # NaFlex: the size comes from the image and max_num_patches; here it is image_size.
    'Siglip2ImageProcessor': dict(_COMMON, backend='pil', resample=2, image_mean=HALF, image_std=HALF),
    'DINOv3ViTImageProcessor': dict(_COMMON, backend='torch_aa', resample=2, image_mean=IMAGENET_MEAN,
                                    image_std=IMAGENET_STD, size={'height': 224, 'width': 224},
                                    default_to_square=True),
}
_FAMILY_PROCESSOR = {
    'dinov2': 'BitImageProcessor',
    'dinov3': 'DINOv3ViTImageProcessor',
    'clip': 'CLIPImageProcessor',
    'siglip': 'SiglipImageProcessor',
}
# preprocessor_config.json of the hub checkpoints (facebook/dinov2-*, facebook/dinov3-*,
# openai/clip-vit-*, google/siglip2-*), used when no config is given. SigLIP v1
# checkpoints (google/siglip-*) store resample=3 (bicubic): pass their json.
HUB_CONFIGS = {
    'dinov2': {'image_processor_type': 'BitImageProcessor', 'size': {'shortest_edge': 256},
               'crop_size': {'height': 224, 'width': 224}, 'do_center_crop': True, 'resample': 3,
               'image_mean': list(IMAGENET_MEAN), 'image_std': list(IMAGENET_STD)},
    'dinov3': {'image_processor_type': 'DINOv3ViTImageProcessorFast', 'size': {'height': 224, 'width': 224},
               'resample': 2, 'image_mean': list(IMAGENET_MEAN), 'image_std': list(IMAGENET_STD)},
    'clip': {'image_processor_type': 'CLIPImageProcessor', 'size': {'shortest_edge': 224},
             'crop_size': {'height': 224, 'width': 224}, 'do_center_crop': True, 'resample': 3,
             'image_mean': list(CLIP_MEAN), 'image_std': list(CLIP_STD)},
    'siglip': {'image_processor_type': 'SiglipImageProcessor', 'size': {'height': 224, 'width': 224},
               'resample': 2, 'image_mean': list(HALF), 'image_std': list(HALF)},
}


def for_family(family: str, image_size: int, processor_config: dict | None = None,
               processor_backend: str = 'pil') -> Preprocess:
  """The preprocessing of a family's reference processor, with image_size x image_size outputs.

  family: 'dinov2' | 'dinov3' | 'clip' | 'siglip'. processor_config: the parsed
  preprocessor_config.json of a checkpoint; its `image_processor_type`
  (Bit/CLIP/Siglip/Siglip2/DINOv3ViT, with or without a Fast or Pil suffix)
  picks the processor class, else the family does, and its values win over the
  class defaults, key by key, as in transformers. None: HUB_CONFIGS[family].
  processor_backend: which of transformers' two processors of that class, by
  AutoImageProcessor's name for it: 'pil' (the default) or 'torchvision' (see
  the module docstring). The type's suffix does not choose it, as it does not
  in transformers 5.

  Other sizes: when image_size differs from the processor's native output
  (crop_size if it crops, else size), resize and crop are scaled together: the
  resize size becomes round(size * image_size / native), halves rounding up,
  and the crop becomes image_size. E.g. DINOv2 at 336: shortest edge
  256 * 336 / 224 = 384, crop 336; a square resize simply becomes image_size.
  Siglip2ImageProcessor (NaFlex, which sizes each image by its aspect ratio)
  becomes a square resize to image_size with the config's resample/mean/std.

  Raises ValueError for an unknown family or processor type, or a config field
  this module cannot reproduce (naming the field). Keys it does not use
  (processor_class, data_format, patch_size, ...) are ignored.
  """
  if family not in FAMILIES:
    raise ValueError(f'for_family: unknown family {family!r}, expected one of {FAMILIES}')
  check_processor_backend(processor_backend)
  image_size = _positive_int(image_size, 'for_family: image_size')
  config = HUB_CONFIGS[family] if processor_config is None else processor_config
  if not isinstance(config, dict):
    raise ValueError(f'for_family: processor_config must be a dict, got {type(config).__name__}')
  kind = config.get('image_processor_type') or _FAMILY_PROCESSOR[family]
  if isinstance(kind, str):
    kind = kind.removesuffix('Fast').removesuffix('Pil')
  if not isinstance(kind, str) or kind not in _CLASS_DEFAULTS:
    raise ValueError(f'processor_config["image_processor_type"]={kind!r} is not one of '
                     f'{sorted(_CLASS_DEFAULTS)} (with or without a Fast/Pil suffix)')
  c = dict(_CLASS_DEFAULTS[kind])
  c.update({k: v for k, v in config.items() if v is not None})

  field = lambda name: f'processor_config["{name}"]'
  if not c['do_resize']:
    raise ValueError(f'{field("do_resize")}=False: outputs would not have a fixed size')
  names = {code: name for name, code in PIL_RESAMPLE.items()}
  resample = names.get(c['resample']) if type(c['resample']) is int else None
  if resample is None:
    raise ValueError(f'{field("resample")}={c["resample"]!r} is not a PIL resampling code 0-5')
  mean, std = (0.0,) * 3, (1.0,) * 3
  if c['do_normalize']:
    mean, std = (_floats3(c[name], field(name), broadcast=True) for name in ('image_mean', 'image_std'))
  rescale_factor = 1.0
  if c['do_rescale']:
    rescale_factor = c['rescale_factor']
    if isinstance(rescale_factor, bool) or not isinstance(rescale_factor, (int, float)) or rescale_factor <= 0:
      raise ValueError(f'{field("rescale_factor")}={rescale_factor!r} must be a positive number')

  if kind == 'Siglip2ImageProcessor':
    resize, size, crop = 'square', image_size, None
  else:
    resize, size = _parse_size(c.get('size'), c.get('default_to_square'), field('size'))
    crop = _parse_crop(c.get('crop_size'), field('crop_size')) if c.get('do_center_crop') else None
    if resize == 'shortest_edge' and crop is None:
      raise ValueError(f'{field("do_center_crop")} must be true with a shortest_edge size, '
                       'or outputs would not be square')
    native = crop if crop is not None else size
    if image_size != native:
      size = math.floor(size * image_size / native + 0.5)
      crop = None if crop is None else image_size
  backend = _CLASS_DEFAULTS[kind]['backend']
  if processor_backend == 'torchvision' and backend == 'pil':
    backend = 'torch_uint8'  # the class's torchvision processor: the same steps on a uint8 tensor
  try:
    return Preprocess(resize=resize, size=size, crop=crop, resample=resample, backend=backend,
                      mean=mean, std=std, rescale_factor=rescale_factor)
  except ValueError as e:  # e.g. a resample torch cannot antialias: say which config it came from.
    raise ValueError(f'processor_config ({kind}): {e}') from e


def check_processor_backend(processor_backend: str) -> None:
  if processor_backend not in PROCESSOR_BACKENDS:
    raise ValueError(f'processor_backend={processor_backend!r} is not one of {PROCESSOR_BACKENDS}')


def _parse_size(size, default_to_square, name) -> tuple[str, int]:
  """A transformers size (int, [h, w] or dict) -> ('shortest_edge' | 'square', n)."""
  if isinstance(size, int) and not isinstance(size, bool):
    size = {'height': size, 'width': size} if default_to_square else {'shortest_edge': size}
  elif isinstance(size, (list, tuple)) and len(size) == 2:
    size = {'height': size[0], 'width': size[1]}
  if isinstance(size, dict) and set(size) == {'shortest_edge'}:
    return 'shortest_edge', _positive_int(size['shortest_edge'], name)
  if isinstance(size, dict) and set(size) == {'height', 'width'} and size['height'] == size['width']:
    return 'square', _positive_int(size['height'], name)
  raise ValueError(f'{name}={size!r}: only {{"shortest_edge": n}} or a square {{"height": n, "width": n}} '
                   'is supported')


def _parse_crop(crop, name) -> int:
  if isinstance(crop, int) and not isinstance(crop, bool):
    return _positive_int(crop, name)
  if isinstance(crop, (list, tuple)) and len(crop) == 2:
    crop = {'height': crop[0], 'width': crop[1]}
  if isinstance(crop, dict) and set(crop) == {'height', 'width'} and crop['height'] == crop['width']:
    return _positive_int(crop['height'], name)
  raise ValueError(f'{name}={crop!r}: only a square {{"height": n, "width": n}} crop is supported')


def _positive_int(value, name) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
    raise ValueError(f'{name}={value!r} must be a positive int')
  return int(value)


def _floats3(value, name, broadcast=False) -> tuple[float, float, float]:
  if isinstance(value, (str, bytes)):
    raise ValueError(f'{name}={value!r} must be 3 floats')
  if broadcast and isinstance(value, (int, float)) and not isinstance(value, bool):
    value = [value] * 3  # transformers accepts one float for all channels.
  try:
    values = tuple(float(v) for v in value)
  except (TypeError, ValueError):
    values = ()
  if len(values) != 3:
    raise ValueError(f'{name}={value!r} must be 3 floats')
  return values


def from_timm(data_config: dict, image_size: int) -> Preprocess:
  """timm's eval transform (`create_transform(**resolve_data_config(...))`) at image_size x image_size, from
  a checkpoint's pretrained_cfg: resize to floor(image_size / crop_pct) (the short side, or both sides for
  crop_mode 'squash') with PIL, center crop, to_tensor, normalise. Fields it cannot reproduce are named."""
  image_size = _positive_int(image_size, 'from_timm: image_size')
  c = {'interpolation': 'bicubic', 'crop_pct': 0.875, 'crop_mode': 'center', 'mean': IMAGENET_MEAN,
       'std': IMAGENET_STD} | {k: v for k, v in data_config.items() if v is not None}
  if c['interpolation'] not in PIL_RESAMPLE:
    raise ValueError(f'pretrained_cfg["interpolation"]={c["interpolation"]!r} is not one of {tuple(PIL_RESAMPLE)}')
  if c['crop_mode'] not in ('center', 'squash'):
    raise ValueError(f'pretrained_cfg["crop_mode"]={c["crop_mode"]!r}: only center and squash are reproduced')
  if not 0 < c['crop_pct'] <= 1:
    raise ValueError(f'pretrained_cfg["crop_pct"]={c["crop_pct"]} must be in (0, 1]')
  return Preprocess(resize='square' if c['crop_mode'] == 'squash' else 'shortest_edge',
                    size=math.floor(image_size / c['crop_pct']), resample=c['interpolation'], backend='torchvision',
                    mean=tuple(c['mean']), std=tuple(c['std']), crop=image_size)
