"""stitchjax.preprocess against the transformers processors it reproduces: the PIL ones live, the
torchvision ones through what tests/torchvision_reference.py recorded (and live where torchvision imports),
and the backbone field that chooses between them."""
import dataclasses
import inspect
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest
import transformers
from PIL import Image
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

import helpers as H
import torchvision_reference as TV
from stitchjax import preprocess as pp

# Non-square both ways, odd sizes, an odd crop offset (300x452 -> 256x385), smaller and larger than the targets.
SHAPES = [(224, 224), (300, 451), (451, 300), (300, 452), (37, 51), (225, 223), (97, 500), (1000, 777)]
IMAGENET = {'image_mean': list(pp.IMAGENET_MEAN), 'image_std': list(pp.IMAGENET_STD)}
SIGLIP_V1_JSON = {  # google/siglip-so400m-patch14-384/preprocessor_config.json
    'do_normalize': True, 'do_rescale': True, 'do_resize': True, 'image_mean': [0.5, 0.5, 0.5],
    'image_processor_type': 'SiglipImageProcessor', 'image_std': [0.5, 0.5, 0.5],
    'processor_class': 'SiglipProcessor', 'resample': 3, 'rescale_factor': 0.00392156862745098,
    'size': {'height': 384, 'width': 384}}
DINOV3_JSON = {  # shaped like facebook/dinov3-vit*-pretrain-lvd1689m's preprocessor_config.json, nulls included
    'crop_size': None, 'data_format': 'channels_first', 'default_to_square': True, 'device': None,
    'disable_grouping': None, 'do_center_crop': None, 'do_convert_rgb': None, 'do_normalize': True,
    'do_rescale': True, 'do_resize': True, **IMAGENET, 'image_processor_type': 'DINOv3ViTImageProcessorFast',
    'input_data_format': None, 'resample': 2, 'rescale_factor': 0.00392156862745098, 'return_tensors': None,
    'size': {'height': 224, 'width': 224}}


@pytest.fixture(scope='module')
def images():
  rng = np.random.default_rng(0)
  rgb = [rng.integers(0, 256, shape + (3,), dtype=np.uint8) for shape in SHAPES]
  return rgb + [rng.integers(0, 256, (61, 90), dtype=np.uint8)]  # and a grayscale one


def hf_pixels(processor, images):
  """A transformers PIL-backend processor, image by image, as float32 (B, S, S, 3)."""
  out = []
  for image in images:
    if image.ndim == 2:  # grayscale goes in as a PIL 'L' image, through its do_convert_rgb.
      pixels = processor(Image.fromarray(image), return_tensors='np')['pixel_values']
    else:
      pixels = processor(image, input_data_format='channels_last', return_tensors='np')['pixel_values']
    out.append(pixels[0])
  return np.stack(out).transpose(0, 2, 3, 1)


PIL_CASES = {
    'dinov2_hub': ('dinov2', 224, None, BitImageProcessorPil, dict(
        size={'shortest_edge': 256}, crop_size={'height': 224, 'width': 224}, resample=3, **IMAGENET)),
    'dinov2_336': ('dinov2', 336, None, BitImageProcessorPil, dict(
        size={'shortest_edge': 384}, crop_size={'height': 336, 'width': 336}, resample=3, **IMAGENET)),
    # Crop larger than the short side: transformers zero-pads, ceil(23 / 2) = 12 rows before.
    'dinov2_pad': ('dinov2', 224, {'size': {'shortest_edge': 201}, **IMAGENET}, BitImageProcessorPil, dict(
        size={'shortest_edge': 201}, crop_size={'height': 224, 'width': 224}, resample=3, **IMAGENET)),
    'clip_hub': ('clip', 224, None, CLIPImageProcessorPil, {}),
    'clip_384': ('clip', 384, None, CLIPImageProcessorPil, dict(size={'shortest_edge': 384}, crop_size=384)),
    # Old CLIP jsons store ints: size is a shortest edge (default_to_square=False), crop_size a square.
    'clip_int_sizes': ('clip', 224, {'size': 224, 'crop_size': 224}, CLIPImageProcessorPil,
                       dict(size=224, crop_size=224)),
    'siglip_hub': ('siglip', 224, None, SiglipImageProcessorPil, dict(resample=2)),
    'siglip_v1_json': ('siglip', 384, SIGLIP_V1_JSON, SiglipImageProcessorPil,
                       {k: v for k, v in SIGLIP_V1_JSON.items() if k != 'image_processor_type'}),
    # A json without resample gets the class default (bicubic), as in transformers.
    'siglip_class_default': ('siglip', 256, {'image_processor_type': 'SiglipImageProcessor'},
                             SiglipImageProcessorPil, dict(size={'height': 256, 'width': 256})),
}


@pytest.mark.parametrize('case', PIL_CASES)
def test_pil_families_bit_exact(case, images):
  family, image_size, config, cls, kwargs = PIL_CASES[case]
  pre = pp.for_family(family, image_size, config)
  ours = pre(images)
  ref = hf_pixels(cls(**kwargs), images)
  assert ours.dtype == np.float32 and ours.shape == (len(images), image_size, image_size, 3)
  np.testing.assert_array_equal(ours, ref)


def test_siglip2_naflex_is_a_square_resize(images):
  # A square image fills NaFlex's 16x16 patch budget exactly, so its patches tile a 256x256 image.
  config = {'image_processor_type': 'Siglip2ImageProcessor', 'patch_size': 16, 'max_num_patches': 256,
            'resample': 2, 'image_mean': [0.5] * 3, 'image_std': [0.5] * 3}
  square = [images[0], images[1][:300, :300], images[4][:37, :37], images[7][:777, :777]]
  ours = pp.for_family('siglip', 256, config)(square)
  processor = Siglip2ImageProcessorPil(**{k: v for k, v in config.items() if k != 'image_processor_type'})
  for image, got in zip(square, ours):  # no grayscale: Siglip2 has no do_convert_rgb default.
    patches = processor(image, input_data_format='channels_last', return_tensors='np')['pixel_values'][0]
    ref = patches.reshape(16, 16, 16, 16, 3).transpose(0, 2, 1, 3, 4).reshape(256, 256, 3)
    np.testing.assert_array_equal(got, ref)


def dinov3_reference(image, height, width, mean, std, mode='bilinear', crop=None):
  """DINOv3ViTImageProcessor._preprocess in torch, for one uint8 (H, W) or (H, W, 3) image.

  torchvision (which that processor needs) is not installed here, so this
  follows its steps with what torchvision calls underneath: rescale
  (`image * scale`), tvF.resize (for float tensors: unchanged if the size is
  the same, else F.interpolate(antialias=True, align_corners=False)),
  TorchvisionBackend.center_crop (zero pad, floor before), tvF.normalize.
  """
  import torch
  if image.ndim == 2:
    image = np.repeat(image[:, :, None], 3, axis=-1)
  x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous() * (1 / 255)
  if tuple(x.shape[-2:]) != (height, width):
    x = torch.nn.functional.interpolate(x[None], size=(height, width), mode=mode, align_corners=False,
                                        antialias=True)[0]
  if crop is not None:
    h, w = x.shape[-2:]
    pad_h, pad_w = max(crop - h, 0), max(crop - w, 0)
    x = torch.nn.functional.pad(x, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
    top, left = int((x.shape[-2] - crop) / 2.0), int((x.shape[-1] - crop) / 2.0)
    x = x[:, top:top + crop, left:left + crop]
  x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
  return x.permute(1, 2, 0).numpy()


DINOV3_CASES = {
    'hub': (224, None, dict(size=224)),
    'at_256': (256, None, dict(size=256)),
    'hub_json': (224, DINOV3_JSON, dict(size=224)),
    'bicubic': (224, dict(DINOV3_JSON, resample=3), dict(size=224, mode='bicubic')),
    # Crop larger than the resize: torchvision pads floor(23 / 2) = 11 before, unlike transformers' numpy crop.
    'pad': (224, dict(DINOV3_JSON, size={'height': 201, 'width': 201}, do_center_crop=True, crop_size=224),
            dict(size=201, crop=224)),
}


@pytest.mark.parametrize('case', DINOV3_CASES)
def test_dinov3_matches_torch(case, images):
  image_size, config, ref_kwargs = DINOV3_CASES[case]
  ours = pp.for_family('dinov3', image_size, config)(images)
  size = ref_kwargs.pop('size')
  ref = np.stack([dinov3_reference(im, size, size, pp.IMAGENET_MEAN, pp.IMAGENET_STD, **ref_kwargs)
                  for im in images])
  # torch's AVX2/AVX-512 kernels fuse some multiply-adds (FMA), ours do not: ~1e-6 apart.
  np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def test_dinov3_bit_exact_with_portable_torch_kernel(images, tmp_path):
  """With the FMA-free (DEFAULT) CPU kernel, torch and our resize agree bit for bit."""
  sizes = np.array([im.shape[:2] for im in images[:-1]])
  np.savez(tmp_path / 'in.npz', *images[:-1])
  script = textwrap.dedent(inspect.getsource(dinov3_reference)) + textwrap.dedent(f"""
      data = np.load({str(tmp_path / 'in.npz')!r})
      out = [dinov3_reference(data[f'arr_{{i}}'], 224, 224, {pp.IMAGENET_MEAN}, {pp.IMAGENET_STD}, mode=mode)
             for mode in ('bilinear', 'bicubic') for i in range({len(sizes)})]
      np.save({str(tmp_path / 'out.npy')!r}, np.stack(out))
      """)
  env = dict(os.environ, ATEN_CPU_CAPABILITY='default')
  subprocess.run([sys.executable, '-c', 'import numpy as np\n' + script], env=env, check=True)
  ref = np.load(tmp_path / 'out.npy')
  ours = [pp.Preprocess('square', 224, mode, 'torch_aa', pp.IMAGENET_MEAN, pp.IMAGENET_STD)(images[:-1])
          for mode in ('bilinear', 'bicubic')]
  np.testing.assert_array_equal(np.concatenate(ours), ref)


def test_batch_array_and_grayscale_inputs(images):
  pre = pp.for_family('dinov2', 224)
  same_size = [images[1], images[1][::-1]]
  np.testing.assert_array_equal(pre(np.stack(same_size)), pre(same_size))
  gray = images[-1]
  rgb = np.repeat(gray[:, :, None], 3, axis=-1)
  np.testing.assert_array_equal(pre([gray]), pre([rgb]))
  np.testing.assert_array_equal(pre([gray[:, :, None]]), pre([rgb]))
  assert pre([]).shape == (0, 224, 224, 3)


@pytest.mark.parametrize('images_in, match', [
    ([np.zeros((8, 8, 3), np.float32)], 'uint8'),
    (np.zeros((8, 8, 3), np.uint8), r'\[image\]'),
    ([np.zeros((8, 8, 4), np.uint8)], 'shape'),
])
def test_bad_inputs(images_in, match):
  with pytest.raises(ValueError, match=match):
    pp.for_family('clip', 224)(images_in)


def test_family_defaults_and_scaling():
  expect = {
      'dinov2': pp.Preprocess('shortest_edge', 256, 'bicubic', 'pil', pp.IMAGENET_MEAN, pp.IMAGENET_STD,
                              crop=224),
      'clip': pp.Preprocess('shortest_edge', 224, 'bicubic', 'pil', pp.CLIP_MEAN, pp.CLIP_STD, crop=224),
      'siglip': pp.Preprocess('square', 224, 'bilinear', 'pil', pp.HALF, pp.HALF),
      'dinov3': pp.Preprocess('square', 224, 'bilinear', 'torch_aa', pp.IMAGENET_MEAN, pp.IMAGENET_STD),
  }
  for family, pre in expect.items():
    assert pp.for_family(family, 224) == pre
  assert (pp.for_family('dinov2', 336).size, pp.for_family('dinov2', 336).crop) == (384, 336)
  assert (pp.for_family('dinov2', 518).size, pp.for_family('dinov2', 518).crop) == (592, 518)  # 591.86 -> 592
  assert (pp.for_family('clip', 336).size, pp.for_family('clip', 336).crop) == (336, 336)
  assert pp.for_family('siglip', 384) == dataclasses.replace(expect['siglip'], size=384)
  assert pp.for_family('dinov3', 512).output_size == 512
  # A square resize followed by a crop scales both.
  pre = pp.for_family('clip', 448, {'size': {'height': 256, 'width': 256}, 'crop_size': 224})
  assert (pre.resize, pre.size, pre.crop, pre.output_size) == ('square', 512, 448, 448)


@pytest.mark.parametrize('family', pp.FAMILIES)
def test_dict_round_trip(family):
  pre = pp.for_family(family, 336)
  d = json.loads(json.dumps(pre.to_dict()))
  assert pp.Preprocess.from_dict(d) == pre
  assert pp.Preprocess.from_dict(d).output_size == 336


def test_from_dict_and_field_errors():
  d = pp.for_family('clip', 224).to_dict()
  with pytest.raises(ValueError, match='colour'):
    pp.Preprocess.from_dict({**d, 'colour': 'rgb'})
  with pytest.raises(ValueError, match='backend'):
    pp.Preprocess.from_dict({k: v for k, v in d.items() if k != 'backend'})
  bad = [({'resize': 'fit'}, 'resize'), ({'backend': 'tf'}, 'backend'), ({'crop': None}, 'crop'),
         ({'mean': [0.5, 0.5]}, 'mean'), ({'std': [1, 0, 1]}, 'std'), ({'size': 0}, 'size'),
         ({'backend': 'torch_aa', 'resample': 'lanczos'}, 'resample'),
         ({'resample': 'cubic'}, 'resample'), ({'rescale_factor': 0}, 'rescale_factor')]
  for change, match in bad:
    with pytest.raises(ValueError, match=match):
      pp.Preprocess.from_dict({**d, **change})


@pytest.mark.parametrize('family, image_size, config, match', [
    ('vit', 224, None, 'vit'),
    ('dinov2', 0, None, 'image_size'),
    ('dinov2', 224, [1, 2], 'dict'),
    ('dinov2', 224, {'image_processor_type': 'ViTImageProcessor'}, 'image_processor_type'),
    ('dinov2', 224, {'size': {'longest_edge': 300}}, 'size'),
    ('siglip', 224, {'size': {'height': 224, 'width': 256}}, 'size'),
    ('clip', 224, {'size': 'big'}, 'size'),
    ('clip', 224, {'crop_size': {'height': 224, 'width': 200}}, 'crop_size'),
    ('clip', 224, {'do_center_crop': False}, 'do_center_crop'),
    ('clip', 224, {'do_resize': False}, 'do_resize'),
    ('clip', 224, {'image_mean': [0.5, 0.5]}, 'image_mean'),
    ('clip', 224, {'image_std': 'half'}, 'image_std'),
    ('siglip', 224, {'resample': 9}, 'resample'),
    ('siglip', 224, {'resample': [2]}, 'resample'),
    ('siglip', 224, {'image_processor_type': {'a': 1}}, 'image_processor_type'),
    ('dinov3', 224, {'resample': 1}, 'resample'),  # lanczos: torch cannot antialias it
    ('dinov2', 224, {'rescale_factor': -1.0}, 'rescale_factor'),
])
def test_for_family_errors(family, image_size, config, match):
  with pytest.raises(ValueError, match=match):
    pp.for_family(family, image_size, config)


@pytest.mark.parametrize('config, match', [
    ({'crop_mode': 'border'}, r'pretrained_cfg\["crop_mode"\]=\'border\': only center and squash'),
    ({'interpolation': 'random'}, r'pretrained_cfg\["interpolation"\]=\'random\' is not one of'),
    ({'crop_pct': 1.2}, r'pretrained_cfg\["crop_pct"\]=1.2 must be in \(0, 1\]'),
    ({'std': (0.5, 0.0, 0.5)}, r'std=\(0.5, 0.0, 0.5\) has a zero'),
])
def test_from_timm_names_what_it_cannot_reproduce(config, match):
  with pytest.raises(ValueError, match=match):
    pp.from_timm(config, 28)
  assert pp.from_timm({}, 28) == pp.Preprocess('shortest_edge', 32, 'bicubic', 'torchvision', pp.IMAGENET_MEAN,
                                               pp.IMAGENET_STD, crop=28)  # timm's defaults: crop_pct 0.875


# transformers' torchvision processors, recorded by tests/torchvision_reference.py.
TV_DATA = pathlib.Path(__file__).parent / 'data' / 'torchvision'


def check_torchvision_processor(root: pathlib.Path, case: str) -> None:
  """Our 'torchvision' pixels of a case's images equal the processor's, levels[uint8, channel], bit for bit."""
  family, size, config, images = TV.PROCESSORS[case]
  pre = pp.for_family(family, size, config, 'torchvision')
  levels = np.load(root / 'levels.npz')[case]
  for name in images:
    ref = levels[TV.read(root / 'processors', f'{case}__{name}'), np.arange(3)]
    np.testing.assert_array_equal(pre([TV.read(root / 'inputs', name)])[0], ref, err_msg=f'{case} on {name}')


def check_torchvision_resize(root: pathlib.Path, mode: str) -> None:
  for name, (h, w) in TV.RESIZES:
    ref = TV.read(root / 'resize', f'{mode}__{name}__{h}x{w}')
    np.testing.assert_array_equal(pp.uint8_resize(TV.read(root / 'inputs', name), h, w, mode), ref,
                                  err_msg=f'{mode} {name} -> {h}x{w}')


@pytest.mark.parametrize('case', TV.PROCESSORS)
def test_torchvision_processors_bit_exact(case):
  check_torchvision_processor(TV_DATA, case)


@pytest.mark.parametrize('mode', TV.MODES)
def test_uint8_resize_is_torchvisions(mode):
  check_torchvision_resize(TV_DATA, mode)


@pytest.mark.parametrize('case', TV.PROCESSORS)
def test_pil_processors_bit_exact_on_the_same_images(case):
  """The same photographs and odd shapes through transformers' PIL processors, live, and the two differ."""
  family, size, config, images = TV.PROCESSORS[case]
  processor = getattr(transformers, TV.processor_class(family, config) + 'Pil')(**TV.processor_arguments(config))
  pil, torchvision = pp.for_family(family, size, config), pp.for_family(family, size, config, 'torchvision')
  inputs = [TV.read(TV_DATA / 'inputs', name) for name in images]
  for name, image, ours in zip(images, inputs, pil(inputs)):
    np.testing.assert_array_equal(ours, TV.pixels(processor, image, size), err_msg=f'{case} on {name}')
  assert not np.array_equal(pil(inputs), torchvision(inputs))


def test_torchvision_live_gives_what_the_recorded_references_say(tmp_path):
  """Where torchvision imports and resizes uint8 images itself: the references written now are the committed
  ones and ours, and DINOv3's processor (no PIL one exists) is the 'torch_aa' backend's, both choices."""
  pytest.importorskip('torchvision')
  if not TV.resizes_uint8_itself():
    pytest.skip('torchvision resizes float copies of uint8 images on this CPU (stitchjax/preprocess.py)')
  TV.write(tmp_path)
  for path in sorted(TV_DATA.rglob('*.png')):
    np.testing.assert_array_equal(TV.read(tmp_path / path.parent.relative_to(TV_DATA), path.stem),
                                  TV.read(path.parent, path.stem), err_msg=str(path))
  for case in TV.PROCESSORS:
    check_torchvision_processor(tmp_path, case)
  for mode in TV.MODES:
    check_torchvision_resize(tmp_path, mode)
  processor = transformers.DINOv3ViTImageProcessor(**{k: v for k, v in DINOV3_JSON.items() if v is not None})
  inputs = [TV.read(TV_DATA / 'inputs', name) for name in TV.ODD]
  ref = np.stack([TV.pixels(processor, image, 224) for image in inputs])
  for backend in pp.PROCESSOR_BACKENDS:
    # torch's AVX2/AVX-512 kernels fuse some multiply-adds (FMA), ours do not: ~1e-6 apart.
    np.testing.assert_allclose(pp.for_family('dinov3', 224, DINOV3_JSON, backend)(inputs), ref, rtol=0, atol=1e-5)


def test_the_torchvision_backend_round_trips_and_names_what_it_cannot_do():
  pre = pp.for_family('siglip', 384, processor_backend='torchvision')
  assert (pre.backend, pre.resample) == ('torch_uint8', 'bilinear')
  assert pp.Preprocess.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
  assert pp.for_family('dinov3', 224, processor_backend='torchvision') == pp.for_family('dinov3', 224)
  with pytest.raises(ValueError, match=r"processor_backend='fast' is not one of \('pil', 'torchvision'\)"):
    pp.for_family('clip', 224, processor_backend='fast')
  with pytest.raises(ValueError, match=r"processor_config \(CLIPImageProcessor\): .*resample='lanczos' is not one of "
                                       r"\('bilinear', 'bicubic'\) for backend='torch_uint8'"):
    pp.for_family('clip', 224, {'resample': 1}, 'torchvision')


@pytest.fixture(scope='module')
def tiny_pair(tmp_path_factory):
  root = tmp_path_factory.mktemp('pair')
  H.build('dinov2_registers', root / 'dinov2')
  H.build('siglip', root / 'siglip')
  return root


def test_processor_backend_chooses_the_pixels_and_keys_the_workdir_and_cache(tiny_pair, tmp_path, monkeypatch):
  from stitchjax import backbone, features, workdir
  pil, tv = (backbone.load_backbone(tiny_pair / 'dinov2', processor_backend=b) for b in pp.PROCESSOR_BACKENDS)
  assert (pil.preprocessing.backend, tv.preprocessing.backend) == ('pil', 'torch_uint8')
  assert backbone.load_backbone(tiny_pair / 'dinov2').preprocessing == pil.preprocessing  # the default
  assert workdir.backbone_identity(pil, 'digest') != workdir.backbone_identity(tv, 'digest')
  keys = []
  monkeypatch.setattr(features, 'digest', lambda key: keys.append(key) or 'entry')
  monkeypatch.setattr(features.Cache, '_open', lambda self, entry, key: {})  # as if computed: keys only
  split = type('Split', (), {'fingerprint': 'split'})()
  for bb in (pil, tv):
    features.Cache(tmp_path).tokens(bb, 'dinov2', split, 'train', layers=(1,))
  assert keys[0] != keys[1] and {k for k in keys[0] if keys[0][k] != keys[1][k]} == {'preprocess'}
  # An export records its backend, and reloads with it unless told otherwise.
  backbone.save_backbone(tv, tmp_path / 'export')
  assert backbone.load_backbone(tmp_path / 'export').preprocessing == tv.preprocessing
  assert backbone.load_backbone(tmp_path / 'export', processor_backend='pil').preprocessing == pil.preprocessing


def test_a_bad_processor_backend_is_refused_by_name_before_anything_loads(tiny_pair, monkeypatch):
  from stitchjax import backbone, protocol, tasks
  with pytest.raises(ValueError, match=r"processor_backend='torchvison' is not one of \('pil', 'torchvision'\)"):
    backbone.load_backbone(tiny_pair / 'dinov2', processor_backend='torchvison')
  spec = ml_collections.ConfigDict({'path': str(tiny_pair / 'dinov2'), 'processor_backend': 'PIL'})
  config = ml_collections.ConfigDict({'backbones': {'a': spec}, 'dtype': 'float32'})
  monkeypatch.setattr(backbone, 'load_checkpoint', lambda *a, **k: pytest.fail('a checkpoint was read'))
  message = r"backbones.a.processor_backend='PIL' is not one of \('pil', 'torchvision'\)"
  with pytest.raises(ValueError, match=message):
    backbone.configured('a', spec, 0)
  with pytest.raises(ValueError, match=message):
    protocol.load_backbones(config, ['a'], tasks.Classification())
  monkeypatch.undo()
  with pytest.raises(ValueError, match=r"processor_backend='torchvision': a timm checkpoint has one eval transform"):
    backbone.load_backbone(pathlib.Path(__file__).parent / 'data' / 'timm' / 'siglip' / 'model',
                           processor_backend='torchvision')


def test_a_stitched_export_reloads_its_backbones_with_the_same_pixels(tiny_pair, tmp_path):
  import jax
  import stitchjax
  from stitchjax import export, features
  model = stitchjax.stitch(tiny_pair / 'dinov2', tiny_pair / 'siglip', layer=1, num_classes=2,
                           processor_backend='torchvision')
  assert model.source.preprocessing.backend == model.target.preprocessing.backend == 'torch_uint8'
  params = model.init(jax.random.key(0))
  sources = {role: {'path': str(tiny_pair / name), 'image_size': bb.config.image_size,
                    'processor_backend': bb.processor_backend, 'digest': features.params_digest(bb.params)}
             for role, name, bb in (('source', 'dinov2', model.source), ('target', 'siglip', model.target))}
  export.save_stitched(tmp_path / 'export', model.spec, params, ['a', 'b'], sources)
  again = stitchjax.load_stitched(tmp_path / 'export')
  images = [TV.read(TV_DATA / 'inputs', name) for name in ('hopper_301x173', 'noise_100x80')]
  np.testing.assert_array_equal(again.model.preprocess(images), model.preprocess(images))
