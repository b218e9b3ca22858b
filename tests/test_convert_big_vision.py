"""The big_vision `.npz` converter against transformers, and every bad archive it must refuse.

No big_vision checkpoint is downloaded: tiny transformers SigLIP models are written
out under big_vision's names and shapes (the inverse of transformers'
convert_siglip_to_hf.py / convert_siglip2_to_hf.py, restated here independently of
the converter), then loaded back and run block by block against the torch model.
"""
import pickle

import ml_dtypes
import numpy as np
import pytest
import scipy.ndimage

import helpers as H
from convert import CheckpointError, big_vision, load_checkpoint
from stitchjax import load_backbone, vit

TOL = 1e-5


# ---- transformers state dict -> big_vision names (what big_vision's flax modules would hold)

def _layer_norm(sd, hf):
  return {'scale': sd[hf + '.weight'], 'bias': sd[hf + '.bias']}


def _dense(sd, hf):
  return {'kernel': sd[hf + '.weight'].T, 'bias': sd[hf + '.bias']}


def _attention(q, k, v, o, heads):
  """(weight, bias) pairs of torch Linears -> flax MultiHeadDotProductAttention, heads on their own axes."""
  out = {}
  for name, (w, b) in zip(('query', 'key', 'value'), (q, k, v)):
    out[f'{name}/kernel'] = w.T.reshape(w.shape[1], heads, -1)  # (D, heads, head_dim)
    out[f'{name}/bias'] = b.reshape(heads, -1)
  w, b = o
  out['out/kernel'] = w.T.reshape(heads, -1, w.shape[0])  # (heads, head_dim, D)
  out['out/bias'] = b
  return out


def _under(prefix, tree):
  return {f'{prefix}/{k}': v for k, v in tree.items()}


def _block(sd, s, heads):
  pair = lambda name: (sd[f'{s}self_attn.{name}.weight'], sd[f'{s}self_attn.{name}.bias'])
  return {**_under('LayerNorm_0', _layer_norm(sd, s + 'layer_norm1')),
          **_under('LayerNorm_1', _layer_norm(sd, s + 'layer_norm2')),
          **_under('MultiHeadDotProductAttention_0',
                   _attention(pair('q_proj'), pair('k_proj'), pair('v_proj'), pair('out_proj'), heads)),
          **_under('MlpBlock_0/Dense_0', _dense(sd, s + 'mlp.fc1')),
          **_under('MlpBlock_0/Dense_1', _dense(sd, s + 'mlp.fc2'))}


def _encoder(blocks, scan):
  if scan:  # big_vision's scan=True: one encoderblock, each leaf stacked on a leading depth axis
    return {f'encoderblock/{k}': np.stack([b[k] for b in blocks]) for k in blocks[0]}
  return {f'encoderblock_{i}/{k}': v for i, b in enumerate(blocks) for k, v in b.items()}


def image_tower(model, scan=False) -> dict:
  tower = H.vision_tower(model)
  sd = {k: v.float().numpy() for k, v in tower.state_dict().items()}
  c = tower.config
  heads = c.num_attention_heads
  out = {'embedding/kernel': sd['embeddings.patch_embedding.weight'].transpose(2, 3, 1, 0),
         'embedding/bias': sd['embeddings.patch_embedding.bias'],
         'pos_embedding': sd['embeddings.position_embedding.weight'][None]}
  blocks = [_block(sd, f'encoder.layers.{i}.', heads) for i in range(c.num_hidden_layers)]
  out.update(_under('Transformer', _encoder(blocks, scan)))
  out.update(_under('Transformer/encoder_norm', _layer_norm(sd, 'post_layernorm')))
  if 'head.probe' in sd:
    # torch's MultiheadAttention packs q, k, v on the first axis of one in_proj matrix.
    weights, biases = np.split(sd['head.attention.in_proj_weight'], 3), np.split(sd['head.attention.in_proj_bias'], 3)
    q, k, v = zip(weights, biases)
    o = (sd['head.attention.out_proj.weight'], sd['head.attention.out_proj.bias'])
    out.update({'MAPHead_0/probe': sd['head.probe'],
                **_under('MAPHead_0/MultiHeadDotProductAttention_0', _attention(q, k, v, o, heads)),
                **_under('MAPHead_0/LayerNorm_0', _layer_norm(sd, 'head.layernorm')),
                **_under('MAPHead_0/MlpBlock_0/Dense_0', _dense(sd, 'head.mlp.fc1')),
                **_under('MAPHead_0/MlpBlock_0/Dense_1', _dense(sd, 'head.mlp.fc2'))})
  return out


def text_side(model) -> dict:
  """The text tower, temperature and bias: the real ones of a SiglipModel, else a small stand-in."""
  if not hasattr(model, 'text_model'):
    rng = np.random.default_rng(1)
    return {'txt/Embed_0/embedding': rng.standard_normal((50, 16), np.float32),
            'txt/Encoder_0/encoderblock_0/LayerNorm_0/scale': np.ones(16, np.float32),
            'txt/head/kernel': rng.standard_normal((16, 16), np.float32), 't': np.ones(1, np.float32),
            'b': -np.ones(1, np.float32)}
  sd = {k: v.float().numpy() for k, v in model.text_model.state_dict().items()}
  c = model.config.text_config
  blocks = [_block(sd, f'encoder.layers.{i}.', c.num_attention_heads) for i in range(c.num_hidden_layers)]
  return {'txt/Embed_0/embedding': sd['embeddings.token_embedding.weight'],
          'txt/pos_embedding': sd['embeddings.position_embedding.weight'][None],
          **_under('txt/Encoder_0', _encoder(blocks, scan=False)),
          **_under('txt/Encoder_0/encoder_norm', _layer_norm(sd, 'final_layer_norm')),
          **_under('txt/head', _dense(sd, 'head')),
          't': model.logit_scale.detach().numpy(), 'b': model.logit_bias.detach().numpy()}


def big_vision_arrays(model, layout: str, scan=False) -> dict:
  """layout: 'params' (as released: params/img, params/txt, params/t, params/b), 'bare' (img, txt, t, b
  without 'params/') or 'vision' (flatten_dict(params['img'], sep='/'))."""
  img = image_tower(model, scan)
  if layout == 'vision':
    return img
  tree = {**_under('img', img), **text_side(model)}
  return _under('params', tree) if layout == 'params' else tree


def write(path, arrays):
  np.savez(path, **arrays)
  return path


# ---- parity with transformers at every layer boundary

# (case, layout, scan, image-side projection head): together they cover both block layouts, all three prefixes,
# the text tower being skipped, a headless tower, and an image-side projection head that is ignored.
CASES = [
    ('siglip', 'params', False, False),
    ('siglip_full', 'params', True, True),
    ('siglip', 'bare', True, False),
    ('siglip_nohead', 'vision', False, False),
]


def boundary_errors(model, fields, params) -> dict:
  cfg = vit.ViTConfig(**fields)
  x = H.images(2, cfg.image_size)
  ref = H.reference(model, x)
  errs = {}
  tokens = vit.embed(cfg, params, x)
  errs['embed'] = H.rel_err(tokens, ref.hidden_states[0])
  for i in range(cfg.depth):
    tokens = vit.blocks(cfg, params, tokens, i, i + 1)
    errs[f'block{i}'] = H.rel_err(tokens, ref.hidden_states[i + 1])
  tokens = vit.final(cfg, params, tokens)
  errs['final'] = H.rel_err(tokens, ref.last)
  if cfg.pool == 'map':
    errs['pool'] = H.rel_err(vit.pool(cfg, params, tokens), ref.pooled)
  else:
    assert ref.pooled is None
  return errs


@pytest.mark.parametrize('name,layout,scan,projection', CASES)
def test_matches_transformers_at_every_boundary(name, layout, scan, projection, tmp_path):
  model = H.build(name, tmp_path / 'hf')
  arrays = big_vision_arrays(model, layout, scan)
  if projection:  # an image tower built with num_classes: the Dense after pooling, outside pooler_output
    prefix = 'params/img/' if layout == 'params' else 'img/' if layout == 'bare' else ''
    arrays[prefix + 'head/kernel'] = np.ones((32, 8), np.float32)
    arrays[prefix + 'head/bias'] = np.ones(8, np.float32)
  path = write(tmp_path / 'ckpt.npz', arrays)
  fields, method, params, processor = big_vision.load(path)
  c = H.vision_tower(model).config
  has_head = getattr(c, 'vision_use_head', True)
  assert fields == vit.ViTConfig(
      family='siglip', depth=c.num_hidden_layers, dim=c.hidden_size, heads=c.num_attention_heads,
      mlp_dim=c.intermediate_size, patch_size=c.patch_size, image_size=c.image_size, cls_token=False,
      act='gelu_tanh', norm_eps=1e-6, pool='map' if has_head else 'none').to_dict()
  assert (method, processor) == ('zoom', None)
  errs = boundary_errors(model, fields, params)
  assert max(errs.values()) <= TOL, errs
  assert ('pool' in errs) == has_head


def test_load_checkpoint_dispatches_npz(tmp_path):
  model = H.build('siglip_nohead', tmp_path / 'hf')
  path = write(tmp_path / 'vision.npz', big_vision_arrays(model, 'vision'))
  direct, via = big_vision.load(path), load_checkpoint(path)
  assert direct[:2] == via[:2]
  np.testing.assert_array_equal(direct[2]['blocks']['attn']['q']['kernel'], via[2]['blocks']['attn']['q']['kernel'])


def test_bfloat16_archives_are_read_as_numpy_saves_them(tmp_path):
  model = H.build('siglip_nohead', tmp_path / 'hf')
  arrays = big_vision_arrays(model, 'vision')
  bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in arrays.items()}  # np.savez stores these as void '|V2'
  _, _, params, _ = big_vision.load(write(tmp_path / 'bf16.npz', bf16))
  want = arrays['Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel'].astype(ml_dtypes.bfloat16).astype(np.float32)
  np.testing.assert_array_equal(params['blocks']['mlp']['fc1']['kernel'][1], want)


# ---- position resampling

def resample_posemb(old, new_len):
  """big_vision.models.vit.resample_posemb, restated from its definition; old: (1, N, D)."""
  gs_old, gs_new = int(np.sqrt(old.shape[1])), int(np.sqrt(new_len))
  grid = old.reshape(gs_old, gs_old, -1)
  grid = scipy.ndimage.zoom(grid, (gs_new / gs_old, gs_new / gs_old, 1), order=1)
  return grid.reshape(1, gs_new * gs_new, -1)


def linear_align_corners(grid, new):
  """What zoom(order=1) computes: bilinear with the corner samples kept, output i at input i*(old-1)/(new-1)."""
  old = grid.shape[0]
  x = np.arange(new) * (old - 1) / (new - 1)
  lo = np.minimum(np.floor(x).astype(int), old - 2)
  m = np.zeros((new, old))
  m[np.arange(new), lo] += 1 - (x - lo)
  m[np.arange(new), lo + 1] += x - lo
  return np.einsum('ai,bj,ijd->abd', m, m, grid.astype(np.float64))


@pytest.mark.parametrize('image_size', [112, 32])
def test_resampled_positions_follow_big_vision(image_size, tmp_path):
  model = H.build('siglip', tmp_path / 'hf')
  arrays = big_vision_arrays(model, 'params')
  bb = load_backbone(write(tmp_path / 'ckpt.npz', arrays), image_size=image_size)
  grid = image_size // 16
  ours = np.asarray(bb.params['embed']['pos'])
  old = arrays['params/img/pos_embedding']
  np.testing.assert_array_equal(ours, resample_posemb(old, grid * grid)[0])
  want = linear_align_corners(old.reshape(4, 4, -1), grid).reshape(grid * grid, -1)
  assert H.rel_err(ours, want) <= 1e-6


# ---- archives that must be refused, each naming the file and the key

@pytest.fixture(scope='module')
def released(tmp_path_factory):
  """A two-tower archive as released (params/img, per-block layout) and the same with scan=True blocks."""
  model = H.build('siglip', tmp_path_factory.mktemp('hf'))
  return big_vision_arrays(model, 'params'), big_vision_arrays(model, 'params', scan=True)


def _edit(tmp_path, arrays, fn, name='ckpt.npz'):
  arrays = dict(arrays)
  fn(arrays)
  return write(tmp_path / name, arrays)


def test_pickled_object_array_is_refused(released, tmp_path):
  # Even in the text tower, which is never read: the archive as a whole needs pickle.
  vocab = np.array([{'token': 1}], dtype=object)
  path = _edit(tmp_path, released[0], lambda a: a.update({'params/txt/vocab': vocab}))
  with pytest.raises(CheckpointError, match=r"ckpt.npz: 'params/txt/vocab' is an object array, which needs pickle"):
    big_vision.load(path)
  plain = tmp_path / 'pickled.npz'
  plain.write_bytes(pickle.dumps({'params/img/pos_embedding': np.zeros(3)}))
  with pytest.raises(CheckpointError, match=r'pickled.npz: not a readable .npz archive .*allow_pickle'):
    big_vision.load(plain)


def test_truncated_and_corrupt_archives_are_named(released, tmp_path):
  path = write(tmp_path / 'ckpt.npz', released[0])
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match=r'ckpt.npz: not a readable .npz archive'):
    big_vision.load(path)
  # Damage inside a member's data fails its CRC check: while reading the header of a small member,
  # while reading the data of a large one (kept contiguous, as np.savez stores members uncompressed).
  arrays = {**released[0], 'params/img/MAPHead_0/LayerNorm_0/bias': np.arange(4096, dtype=np.float32)}
  for key in ('params/img/Transformer/encoderblock_1/MlpBlock_0/Dense_0/bias',
              'params/img/MAPHead_0/LayerNorm_0/bias'):
    data = write(path, arrays).read_bytes()
    start = data.index(arrays[key].tobytes()[-64:])
    path.write_bytes(data[:start] + bytes(64) + data[start + 64:])
    with pytest.raises(CheckpointError, match=f"ckpt.npz: cannot read key '{key}'"):
      big_vision.load(path)
  single = tmp_path / 'single.npz'
  with open(single, 'wb') as f:
    np.save(f, np.zeros(3, np.float32))
  with pytest.raises(CheckpointError, match='single.npz: a single array'):
    big_vision.load(single)


def test_missing_key_is_named(released, tmp_path):
  key = 'params/img/Transformer/encoderblock_1/LayerNorm_1/bias'
  with pytest.raises(CheckpointError, match=f"ckpt.npz: missing key '{key}'"):
    big_vision.load(_edit(tmp_path, released[0], lambda a: a.pop(key)))
  key = 'params/img/MAPHead_0/MultiHeadDotProductAttention_0/key/bias'
  with pytest.raises(CheckpointError, match=f"missing key '{key}'"):
    big_vision.load(_edit(tmp_path, released[1], lambda a: a.pop(key)))
  with pytest.raises(CheckpointError, match='only learned position embeddings'):
    big_vision.load(_edit(tmp_path, released[0], lambda a: a.pop('params/img/pos_embedding')))


def test_wrong_shape_is_named(released, tmp_path):
  t = 'params/img/Transformer/'
  edit = lambda a: a.update({t + 'encoderblock_2/LayerNorm_0/scale': np.ones(31, np.float32)})
  with pytest.raises(CheckpointError, match=rf"'{t}encoderblock_2/LayerNorm_0/scale' gives blocks/2/norm1/scale "
                                            r'shape \(31,\), expected \(32,\)'):
    big_vision.load(_edit(tmp_path, released[0], edit))
  # Right size, wrong head split: a plain reshape would accept it silently.
  edit = lambda a: a.update({t + 'encoderblock_1/MultiHeadDotProductAttention_0/value/kernel': np.ones((32, 8, 4))})
  with pytest.raises(CheckpointError, match=r"value/kernel' has shape \(32, 8, 4\), which does not fit "
                                            r'blocks/1/attn/v/kernel'):
    big_vision.load(_edit(tmp_path, released[0], edit))
  key = t + 'encoderblock/MlpBlock_0/Dense_1/bias'
  edit = lambda a: a.update({key: a[key][:2]})
  with pytest.raises(CheckpointError, match=rf"'{key}' has shape \(2, 32\); expected a leading axis of 3 blocks"):
    big_vision.load(_edit(tmp_path, released[1], edit))
  edit = lambda a: a.update({'params/img/pos_embedding': np.ones((1, 15, 32), np.float32)})
  with pytest.raises(CheckpointError, match='15 positions, not a square grid'):
    big_vision.load(_edit(tmp_path, released[0], edit))


@pytest.mark.parametrize('extra,message', [
    ('params/img/Transformer/encoderblock_0/extra/kernel', None),
    ('params/img/pre_logits/kernel', None),  # a tanh Dense after pooling that transformers' SigLIP does not have
    ('params/unknown', None),  # outside both towers
    # A fourth block beside three: the depth follows the highest number, so the block is incomplete.
    ('params/img/Transformer/encoderblock_3/LayerNorm_0/scale',
     "missing key 'params/img/Transformer/encoderblock_3/LayerNorm_0/bias'"),
])
def test_unexpected_key_is_refused(released, extra, message, tmp_path):
  path = _edit(tmp_path, released[0], lambda a: a.update({extra: np.ones(32, np.float32)}))
  with pytest.raises(CheckpointError, match='ckpt.npz: ' + (message or f"unexpected keys '{extra}'")):
    big_vision.load(path)


def test_both_block_layouts_at_once_are_refused(released, tmp_path):
  path = _edit(tmp_path, released[0], lambda a: a.update(
      {k: v for k, v in released[1].items() if '/encoderblock/' in k}))
  with pytest.raises(CheckpointError, match='refusing to guess'):
    big_vision.load(path)
