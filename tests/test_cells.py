"""A config as cells, and its checks before any compute, each naming its field."""
import json

import pytest

from stitchjax import cells, config_lib
from stitchjax.records import Cell


def test_cells_run_probes_first_then_self_stitches_then_pairs():
  c = config_lib.stitching('unused', {'kind': 'image_folder', 'root': 'unused'}, backbones={'a': {}, 'b': {}})
  c.pairs, c.layers, c.methods, c.stitch_layer = 'a:b', '2,6', 'lp,ffm,ffm_tlt', 'mlp'
  got = cells.expand(c)
  assert got[:2] == [Cell('a', 'a', None, 'lp', None), Cell('b', 'b', None, 'lp', None)]
  routes = list(dict.fromkeys((x.source, x.target) for x in got[2:]))
  assert routes == [('a', 'a'), ('b', 'b'), ('a', 'b')]
  assert len(got) == 2 + 3 * 2 * 2 and len(set(got)) == len(got)


@pytest.mark.parametrize('value,message', [('2,x', r"config.layers: entry 'x' is not an integer"),
                                           ('2,2.5', r"config.layers: entry '2.5' is not an integer")])
def test_a_bad_list_entry_is_named_with_its_field(value, message):
  c = config_lib.stitching('unused', {'kind': 'image_folder', 'root': 'unused'})
  c.layers = value
  with pytest.raises(ValueError, match=message):
    cells.typed_list(c, 'layers', int)


@pytest.mark.parametrize('field,value,match', [
    ('pairs', 'dinov2:dinov9', "backbone 'dinov9' is not in config.backbones"),
    ('methods', 'lp,lfmm', "unknown method 'lfmm'"),
    ('stitch_layer', 'conv', "unknown stitch layer 'conv'"),
    ('train.lrs', '0.01,-1', 'learning rate -1 must be positive'),
    ('eval_batch_size', -8, r'config.eval_batch_size=-8 must be positive'),
])
def test_config_errors_name_the_field(field, value, match):
  config = config_lib.stitching('unused', {'kind': 'image_folder', 'root': 'unused'})
  target = config
  for part in field.split('.')[:-1]:
    target = target[part]
  target[field.split('.')[-1]] = value
  with pytest.raises(ValueError, match=match):
    cells.validate(config)


def scouted(tmp_path, layers: str):
  """A config of pairs a:b and b:a whose workdir holds a scout.json ranking layers by ffm_probe."""
  c = config_lib.stitching(str(tmp_path), {'kind': 'image_folder', 'root': 'unused'},
                           backbones={'a': {}, 'b': {}, 'c': {}})
  c.pairs, c.layers, c.methods = 'a:b,b:a', layers, 'ffm_tlt'
  value = {('a', 'b'): [0.1, 0.9, 0.5, 0.8], ('b', 'a'): [0.7, 0.2, 0.6, 0.1], ('a', 'a'): [0.5] * 4,
           ('b', 'b'): [0.4, 0.3, 0.2, 0.1]}
  records = [Cell(s, t, l, 'scout', 'linear').record('val', 'ffm_probe', v[l - 1])
             for (s, t), v in value.items() for l in range(1, 5)]
  (tmp_path / 'scout.json').write_text(json.dumps({'rank_by': 'ffm_probe', 'records': records}))
  return c


def test_scout_k_stitches_each_pair_at_its_k_best_and_each_self_stitch_where_its_pairs_are(tmp_path):
  c = scouted(tmp_path, 'scout:2')
  assert cells.route_layers(c) == {('a', 'a'): [1, 2, 3, 4], ('b', 'b'): [1, 2, 3, 4], ('a', 'b'): [2, 4],
                                   ('b', 'a'): [1, 3]}
  assert cells.all_layers(c) == (1, 2, 3, 4)
  c.pairs = 'a:b'
  assert cells.route_layers(c) == {('a', 'a'): [2, 4], ('b', 'b'): [2, 4], ('a', 'b'): [2, 4]}
  assert {(x.source, x.target, x.layer) for x in cells.expand(c)} == {
      (s, t, l) for s, t in (('a', 'a'), ('b', 'b'), ('a', 'b')) for l in (2, 4)}
  c.pairs = 'a:c'
  with pytest.raises(ValueError, match='no ffm_probe proxies for c->c, a->c: run the scout with these pairs'):
    cells.route_layers(c)


@pytest.mark.parametrize('layers', ['scout:0', 'scout:x', 'scout:'])
def test_scout_k_needs_a_positive_k(tmp_path, layers):
  with pytest.raises(ValueError, match=r'expected scout:K with K a positive integer'):
    cells.route_layers(scouted(tmp_path, layers))


def test_scout_k_without_the_scout_says_to_run_it(tmp_path):
  c = scouted(tmp_path, 'scout:2')
  (tmp_path / 'scout.json').unlink()
  cells.validate(c)  # the layers are the scout's to choose: nothing to check yet
  assert cells.all_layers(c) is None
  with pytest.raises(FileNotFoundError, match='run the scout first'):
    cells.expand(c)
