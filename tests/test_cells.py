"""A config as cells, and its checks before any compute, each naming its field."""
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
