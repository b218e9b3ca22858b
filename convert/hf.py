"""transformers checkpoint directories -> stitchjax ViT.

Reads `config.json` and `model.safetensors` (sharded or not) or `pytorch_model.bin`
of: Dinov2Model, Dinov2WithRegistersModel, DINOv3ViTModel, CLIPVisionModel,
CLIPModel (vision tower), SiglipVisionModel, SiglipModel (vision tower; SigLIP2
fixed-resolution checkpoints use this layout), Siglip2VisionModel and Siglip2Model
(NaFlex, run on a fixed square grid). Both the hub's on-disk key names and
transformers 5's in-memory names are accepted.
"""
import dataclasses
import json
import pathlib

import numpy as np
import safetensors.numpy

from convert import common
from convert.common import CheckpointError, conv, dense, linear, norm, split
from convert.pth import load_state_dict
from stitchjax import atomic
from stitchjax.vit import ViTConfig

ACTS = {'gelu': 'gelu', 'gelu_pytorch_tanh': 'gelu_tanh', 'gelu_new': 'gelu_tanh', 'gelu_fast': 'gelu_tanh',
        'quick_gelu': 'quick_gelu', 'silu': 'silu', 'swish': 'silu', 'relu': 'relu'}
FAMILIES = {
    'Dinov2Model': 'dinov2', 'Dinov2WithRegistersModel': 'dinov2', 'DINOv3ViTModel': 'dinov3',
    'CLIPVisionModel': 'clip', 'CLIPModel': 'clip', 'SiglipVisionModel': 'siglip', 'SiglipModel': 'siglip',
    'Siglip2VisionModel': 'siglip2', 'Siglip2Model': 'siglip2',
}
# Parts of a full vision-language checkpoint that a vision backbone does not use.
FULL_MODELS = ('CLIPModel', 'SiglipModel', 'Siglip2Model')
TEXT_TOWER = (r'^text_model\.', r'^text_projection\.', r'^visual_projection\.', r'^logit_scale$', r'^logit_bias$')
UNUSED = (r'mask_token$', r'position_ids$')  # masked-image pretraining and index buffers


def read_arrays(directory: pathlib.Path) -> dict:
  """A lazy name -> array map over every weight file in a transformers directory."""
  files = sorted(directory.glob('*.safetensors')) or sorted(directory.glob('pytorch_model*.bin'))
  if not files:
    raise CheckpointError(f'{directory}: no *.safetensors or pytorch_model*.bin weight file')
  arrays = {}
  for f in files:
    if f.suffix == '.safetensors':
      try:
        arrays.update(safetensors.numpy.load_file(str(f)))
      except Exception as e:
        raise CheckpointError(f'{f}: not a readable safetensors file ({e})') from e
    else:
      arrays.update(load_state_dict(f))
  return arrays


def architecture(config: dict, path) -> str:
  archs = config.get('architectures') or []
  known = [a for a in archs if a in FAMILIES]
  if not known:
    raise CheckpointError(f'{path}: unsupported architecture {archs or config.get("model_type")!r}; '
                          f'stitchjax reads {sorted(FAMILIES)}')
  return known[0]


def _field(config: dict, key: str, path):
  if key not in config:
    raise CheckpointError(f'{path}/config.json: missing field {key!r}')
  return config[key]


def vit_config(arch: str, config: dict, path) -> tuple[dict, str]:
  """(ViTConfig fields at the checkpoint's native resolution, position resampling method)."""
  if arch in FULL_MODELS:
    config = config.get('vision_config') or {}
  get = lambda key: _field(config, key, path)
  family = FAMILIES[arch]
  act = get('hidden_act')
  if act not in ACTS:
    raise CheckpointError(f'{path}/config.json: unsupported hidden_act {act!r}')
  dim = get('hidden_size')
  patch = get('patch_size')
  if family == 'siglip2':
    grid = int(round(get('num_patches')**0.5))
    image_size = grid * patch
  else:
    image_size = get('image_size')
  fields = dict(family=family, depth=get('num_hidden_layers'), dim=dim, heads=get('num_attention_heads'),
                patch_size=patch, image_size=image_size, norm_eps=get('layer_norm_eps'), act=ACTS[act])
  if family == 'dinov2':
    ratio = get('mlp_ratio')
    swiglu = config.get('use_swiglu_ffn', False)
    hidden = int(dim * ratio)
    fields.update(mlp_dim=(int(hidden * 2 / 3) + 7) // 8 * 8 if swiglu else hidden,
                  mlp='gated' if swiglu else 'mlp', act='silu' if swiglu else ACTS[act],
                  num_registers=config.get('num_register_tokens', 0), layer_scale=True,
                  qkv_bias=(config.get('qkv_bias', True),) * 3)
    return fields, 'bicubic_aa' if arch == 'Dinov2WithRegistersModel' else 'bicubic'
  if family == 'dinov3':
    fields.update(mlp_dim=get('intermediate_size'), mlp='gated' if config.get('use_gated_mlp') else 'mlp',
                  num_registers=config.get('num_register_tokens', 0), layer_scale=True, pos_embed='rope',
                  rope_theta=float(get('rope_theta')),
                  qkv_bias=(get('query_bias'), get('key_bias'), get('value_bias')),
                  proj_bias=get('proj_bias'), mlp_bias=get('mlp_bias'))
    return fields, 'bicubic'
  if family == 'clip':
    fields.update(mlp_dim=get('intermediate_size'), pre_norm=True, patch_bias=False)
    return fields, 'bicubic'
  fields.update(mlp_dim=get('intermediate_size'), cls_token=False,
                pool='map' if config.get('vision_use_head', True) else 'none')
  return fields, 'bilinear_aa' if family == 'siglip2' else 'bicubic'


def _strip_prefix(arrays: dict, arch: str) -> dict:
  """Full vision-language models (and some saved towers) keep the vision weights under 'vision_model.'."""
  prefix = 'vision_model.'
  if arch in FULL_MODELS or any(k.startswith(prefix) for k in arrays):
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in arrays.items()}
  return arrays


def _first(r: common.Reader, *keys):
  """The first of several names a tensor has had across transformers versions."""
  return next((k for k in keys if r.has(k)), keys[0])


def _dinov2(r: common.Reader, cfg):
  e = 'embeddings.'
  r.put('embed/cls', e + 'cls_token', lambda a: a.reshape(-1))
  r.put('embed/pos', e + 'position_embeddings', lambda a: a[0])
  if cfg.num_registers:
    r.put('embed/registers', e + 'register_tokens', lambda a: a[0])
  r.put('embed/patch/kernel', e + 'patch_embeddings.projection.weight', conv)
  r.put('embed/patch/bias', e + 'patch_embeddings.projection.bias')
  for i in range(cfg.depth):
    s, o = f'encoder.layer.{i}.', f'blocks/{i}/'
    for ours, names in {'q': ('attention.attention.query', 'attention.q_proj'),
                        'k': ('attention.attention.key', 'attention.k_proj'),
                        'v': ('attention.attention.value', 'attention.v_proj'),
                        'o': ('attention.output.dense', 'attention.o_proj')}.items():
      key = _first(r, *(s + name for name in names))
      r.put(f'{o}attn/{ours}/kernel', key + '.weight', linear)
      if r.has(key + '.bias'):
        r.put(f'{o}attn/{ours}/bias', key + '.bias')
    _norms_and_scales(r, s, o)
    if cfg.mlp == 'gated':
      if r.has(s + 'mlp.weights_in.weight'):  # the hub layout stores gate and up as one matrix
        split(r, s + 'mlp.weights_in.weight', [o + 'mlp/gate', o + 'mlp/up'])
        split(r, s + 'mlp.weights_in.bias', [o + 'mlp/gate', o + 'mlp/up'])
      else:
        dense(r, s + 'mlp.gate_proj', o + 'mlp/gate')
        dense(r, s + 'mlp.up_proj', o + 'mlp/up')
      dense(r, _first(r, s + 'mlp.weights_out.weight', s + 'mlp.down_proj.weight')[:-7], o + 'mlp/fc2')
    else:
      dense(r, s + 'mlp.fc1', o + 'mlp/fc1')
      dense(r, s + 'mlp.fc2', o + 'mlp/fc2')
  norm(r, 'layernorm', 'norm')


def _dinov3(r: common.Reader, cfg):
  e = 'embeddings.'
  r.put('embed/cls', e + 'cls_token', lambda a: a.reshape(-1))
  if cfg.num_registers:
    r.put('embed/registers', e + 'register_tokens', lambda a: a[0])
  elif r.has(e + 'register_tokens'):  # transformers keeps the parameter, (1, 0, D), for no registers
    registers = r.get(e + 'register_tokens')
    if registers.size:
      raise r.error(f"key '{e}register_tokens' has shape {registers.shape}, but config.json has "
                    'num_register_tokens=0; refusing to load part of the checkpoint')
  r.put('embed/patch/kernel', e + 'patch_embeddings.weight', conv)
  r.put('embed/patch/bias', e + 'patch_embeddings.bias')
  layer = 'model.layer.' if r.has('model.layer.0.norm1.weight') else 'layer.'
  for i in range(cfg.depth):
    s, o = f'{layer}{i}.', f'blocks/{i}/'
    for ours in 'qkvo':
      dense(r, f'{s}attention.{ours}_proj', f'{o}attn/{ours}')
    _norms_and_scales(r, s, o)
    names = {'gate': 'gate_proj', 'up': 'up_proj', 'fc2': 'down_proj'} if cfg.mlp == 'gated' else \
        {'fc1': 'up_proj', 'fc2': 'down_proj'}
    for ours, name in names.items():
      dense(r, f'{s}mlp.{name}', f'{o}mlp/{ours}')
  norm(r, 'norm', 'norm')


def _clip_siglip(r: common.Reader, cfg, arch: str):
  e = 'embeddings.'
  if cfg.cls_token:
    r.put('embed/cls', e + 'class_embedding')
  r.put('embed/pos', e + 'position_embedding.weight')
  if arch.startswith('Siglip2'):  # NaFlex embeds flattened (p, p, C) patches with a Linear
    p = cfg.patch_size
    r.put('embed/patch/kernel', e + 'patch_embedding.weight', lambda w: w.reshape(len(w), p, p, -1).transpose(1, 2, 3, 0))
  else:
    r.put('embed/patch/kernel', e + 'patch_embedding.weight', conv)
  if cfg.patch_bias:
    r.put('embed/patch/bias', e + 'patch_embedding.bias')
  if cfg.pre_norm:
    norm(r, 'pre_layrnorm', 'embed/pre_norm')
  for i in range(cfg.depth):
    s, o = f'encoder.layers.{i}.', f'blocks/{i}/'
    for ours, name in {'q': 'q_proj', 'k': 'k_proj', 'v': 'v_proj', 'o': 'out_proj'}.items():
      dense(r, f'{s}self_attn.{name}', f'{o}attn/{ours}')
    norm(r, s + 'layer_norm1', o + 'norm1')
    norm(r, s + 'layer_norm2', o + 'norm2')
    dense(r, s + 'mlp.fc1', o + 'mlp/fc1')
    dense(r, s + 'mlp.fc2', o + 'mlp/fc2')
  norm(r, 'post_layernorm', 'norm')
  if cfg.pool == 'map':
    map_head(r, 'head.', 'head/')


def map_head(r: common.Reader, s: str, o: str):
  """SigLIP's attention-pooling head in torch.nn.MultiheadAttention layout."""
  r.put(o + 'probe', s + 'probe', lambda a: a.reshape(1, -1))
  for part in ('in_proj_weight', 'in_proj_bias'):
    split(r, s + 'attention.' + part, [o + 'attn/q', o + 'attn/k', o + 'attn/v'])
  dense(r, s + 'attention.out_proj', o + 'attn/o')
  norm(r, s + 'layernorm', o + 'norm')
  dense(r, s + 'mlp.fc1', o + 'mlp/fc1')
  dense(r, s + 'mlp.fc2', o + 'mlp/fc2')


def _norms_and_scales(r: common.Reader, s: str, o: str):
  norm(r, s + 'norm1', o + 'norm1')
  norm(r, s + 'norm2', o + 'norm2')
  r.put(o + 'ls1', s + 'layer_scale1.lambda1')
  r.put(o + 'ls2', s + 'layer_scale2.lambda1')


def load(directory) -> tuple[dict, str, dict, dict | None]:
  """-> (ViTConfig fields at native resolution, resampling method, params, preprocessor config or None)."""
  directory = pathlib.Path(directory)
  config = common.read_config(directory)
  arch = architecture(config, directory)
  fields, method = vit_config(arch, config, directory)
  try:
    cfg = ViTConfig(**fields)
  except ValueError as e:
    raise CheckpointError(f'{directory}/config.json: {e}') from e
  reader = common.Reader(directory, _strip_prefix(read_arrays(directory), arch))
  if cfg.family == 'dinov2':
    _dinov2(reader, cfg)
  elif cfg.family == 'dinov3':
    _dinov3(reader, cfg)
  else:
    _clip_siglip(reader, cfg, arch)
  reader.check_all_used(UNUSED + (TEXT_TOWER if arch in FULL_MODELS else ()))
  params = common.assemble(cfg, reader)
  processor = directory / 'preprocessor_config.json'
  return cfg.to_dict(), method, params, json.loads(processor.read_text()) if processor.exists() else None


# ---------------------------------------------------------------------------------------------
# Writing: stitchjax params -> a transformers directory (the layouts the project's own models use).

WRITABLE = {'dinov2': 'Dinov2Model', 'dinov3': 'DINOv3ViTModel', 'clip': 'CLIPVisionModel',
            'siglip': 'SiglipVisionModel'}


def _hf_config(cfg) -> dict:
  """config.json of the transformers class that `vit_config` reads back as `cfg`."""
  plain = not cfg.num_registers and cfg.mlp == 'mlp' and cfg.pos_embed == 'learned'
  if cfg.family not in WRITABLE or not (plain or cfg.family == 'dinov3'):
    raise ValueError(f'only plain {sorted(WRITABLE)} layouts (and DINOv3) can be written as transformers '
                     f'directories, got family={cfg.family!r} (registers={cfg.num_registers}, mlp={cfg.mlp!r})')
  act = {'gelu': 'gelu', 'gelu_tanh': 'gelu_pytorch_tanh', 'quick_gelu': 'quick_gelu', 'silu': 'silu',
         'relu': 'relu'}[cfg.act]
  common_fields = dict(hidden_size=cfg.dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads,
                       image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=3,
                       layer_norm_eps=cfg.norm_eps, hidden_act=act)
  if cfg.family == 'dinov2':
    if cfg.mlp_dim % cfg.dim:  # transformers' Dinov2Config stores the MLP width as an integer ratio
      raise ValueError(f'Dinov2Model needs mlp_dim a multiple of dim, got mlp_dim={cfg.mlp_dim}, dim={cfg.dim}')
    return common_fields | dict(architectures=['Dinov2Model'], model_type='dinov2', mlp_ratio=cfg.mlp_dim // cfg.dim,
                                qkv_bias=cfg.qkv_bias[0], layerscale_value=1.0, use_swiglu_ffn=False)
  if cfg.family == 'dinov3':
    q, k, v = cfg.qkv_bias
    return common_fields | dict(architectures=['DINOv3ViTModel'], model_type='dinov3_vit', intermediate_size=cfg.mlp_dim,
                                use_gated_mlp=cfg.mlp == 'gated', num_register_tokens=cfg.num_registers,
                                rope_theta=cfg.rope_theta, query_bias=q, key_bias=k, value_bias=v,
                                proj_bias=cfg.proj_bias, mlp_bias=cfg.mlp_bias, layerscale_value=1.0)
  if cfg.family == 'clip':
    return common_fields | dict(architectures=['CLIPVisionModel'], model_type='clip_vision_model',
                                intermediate_size=cfg.mlp_dim)
  return common_fields | dict(architectures=['SiglipVisionModel'], model_type='siglip_vision_model',
                              intermediate_size=cfg.mlp_dim, vision_use_head=cfg.pool == 'map')


def _state_dict(cfg, params) -> dict:
  """The state dict (torch layouts: Linear (out, in), Conv2d (D, C, p, p)) under the names transformers'
  `save_pretrained` writes for the class."""
  top = {k: np.asarray(v, np.float32) for k, v in common.flat_paths(params).items() if not k.startswith('blocks/')}
  stacked = {k[7:]: np.asarray(v, np.float32) for k, v in common.flat_paths(params).items() if k.startswith('blocks/')}
  out = {}

  def dense(key, src, ours):
    out[key + '.weight'] = src[ours + '/kernel'].T
    if ours + '/bias' in src:
      out[key + '.bias'] = src[ours + '/bias']

  def norm(key, src, ours):
    out[key + '.weight'], out[key + '.bias'] = src[ours + '/scale'], src[ours + '/bias']

  kernel = top['embed/patch/kernel'].transpose(3, 2, 0, 1)  # the inverse of common.conv
  if cfg.family == 'dinov2':
    e = 'embeddings.'
    out[e + 'cls_token'] = top['embed/cls'].reshape(1, 1, -1)
    out[e + 'mask_token'] = np.zeros((1, cfg.dim), np.float32)  # masked-image pretraining only; never read
    out[e + 'position_embeddings'] = top['embed/pos'][None]
    out[e + 'patch_embeddings.projection.weight'] = kernel
    out[e + 'patch_embeddings.projection.bias'] = top['embed/patch/bias']
    names = (('attn/q', 'attention.attention.query'), ('attn/k', 'attention.attention.key'),
             ('attn/v', 'attention.attention.value'), ('attn/o', 'attention.output.dense'),
             ('mlp/fc1', 'mlp.fc1'), ('mlp/fc2', 'mlp.fc2'))
    layer, norms, final = 'encoder.layer.', (('norm1', 'norm1'), ('norm2', 'norm2')), 'layernorm'
  elif cfg.family == 'dinov3':
    e = 'embeddings.'
    out[e + 'cls_token'] = top['embed/cls'].reshape(1, 1, -1)
    out[e + 'mask_token'] = np.zeros((1, 1, cfg.dim), np.float32)  # masked-image pretraining only; never read
    registers = top['embed/registers'][None] if cfg.num_registers else np.zeros((1, 0, cfg.dim), np.float32)
    out[e + 'register_tokens'] = registers  # transformers keeps the parameter, empty, for no registers
    out[e + 'patch_embeddings.weight'] = kernel
    out[e + 'patch_embeddings.bias'] = top['embed/patch/bias']
    mlp = (('mlp/gate', 'mlp.gate_proj'), ('mlp/up', 'mlp.up_proj')) if cfg.mlp == 'gated' else \
        (('mlp/fc1', 'mlp.up_proj'),)
    names = tuple((f'attn/{p}', f'attention.{p}_proj') for p in 'qkvo') + mlp + (('mlp/fc2', 'mlp.down_proj'),)
    layer, norms, final = 'layer.', (('norm1', 'norm1'), ('norm2', 'norm2')), 'norm'
  else:
    e = 'embeddings.'
    out[e + 'patch_embedding.weight'] = kernel
    if cfg.patch_bias:
      out[e + 'patch_embedding.bias'] = top['embed/patch/bias']
    out[e + 'position_embedding.weight'] = top['embed/pos']
    if cfg.cls_token:
      out[e + 'class_embedding'] = top['embed/cls']
    if cfg.pre_norm:
      norm('pre_layrnorm', top, 'embed/pre_norm')
    names = (('attn/q', 'self_attn.q_proj'), ('attn/k', 'self_attn.k_proj'), ('attn/v', 'self_attn.v_proj'),
             ('attn/o', 'self_attn.out_proj'), ('mlp/fc1', 'mlp.fc1'), ('mlp/fc2', 'mlp.fc2'))
    layer, norms, final = 'encoder.layers.', (('norm1', 'layer_norm1'), ('norm2', 'layer_norm2')), 'post_layernorm'
  for i in range(cfg.depth):
    block, s = {k: v[i] for k, v in stacked.items()}, f'{layer}{i}.'
    for ours, name in names:
      dense(s + name, block, ours)
    for ours, name in norms:
      norm(s + name, block, ours)
    if cfg.layer_scale:
      out[s + 'layer_scale1.lambda1'], out[s + 'layer_scale2.lambda1'] = block['ls1'], block['ls2']
  norm(final, top, 'norm')
  if cfg.pool == 'map':
    h = 'head.'
    out[h + 'probe'] = top['head/probe'].reshape(1, 1, -1)
    out[h + 'attention.in_proj_weight'] = np.concatenate([top[f'head/attn/{p}/kernel'].T for p in 'qkv'])
    out[h + 'attention.in_proj_bias'] = np.concatenate([top[f'head/attn/{p}/bias'] for p in 'qkv'])
    dense(h + 'attention.out_proj', top, 'head/attn/o')
    norm(h + 'layernorm', top, 'head/norm')
    dense(h + 'mlp.fc1', top, 'head/mlp/fc1')
    dense(h + 'mlp.fc2', top, 'head/mlp/fc2')
  return out


def save(directory, cfg, params, processor_config: dict | None = None) -> None:
  """Writes `params` as a transformers directory (config.json, model.safetensors, preprocessor_config.json)
  that transformers' `from_pretrained` and `load` both read; atomically, and verified by reading it back."""
  directory = pathlib.Path(directory)
  with atomic.directory(directory) as tmp:
    (tmp / 'config.json').write_text(json.dumps(_hf_config(cfg), indent=2))
    state = {k: np.ascontiguousarray(v) for k, v in _state_dict(cfg, params).items()}
    safetensors.numpy.save_file(state, str(tmp / 'model.safetensors'), metadata={'format': 'pt'})
    if processor_config is not None:
      (tmp / 'preprocessor_config.json').write_text(json.dumps(processor_config, indent=2))
    fields, _, back, _ = load(tmp)
    same_config = ViTConfig(**fields) == dataclasses.replace(cfg, dtype='float32', remat=False)
    back, want = common.flat_paths(back), common.flat_paths(params)
    if not same_config or back.keys() != want.keys() or not all(np.array_equal(back[k], want[k]) for k in want):
      raise CheckpointError(f'{directory}: the written checkpoint does not read back as the given model')
