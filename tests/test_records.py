"""The record schema: cell ids, filters over a run's records, and markdown tables."""
from stitchjax import records
from stitchjax.records import Cell

RUN = [Cell('a', 'a', None, 'lp', None).record('test', 'accuracy', 0.6, n=10),
       Cell('a', 'b', 2, 'ffm_tlt', 'mlp').record('val', 'accuracy', 0.9),
       Cell('a', 'b', 2, 'ffm_tlt', 'mlp').record('test', 'accuracy', 0.8, n=10),
       Cell('b', 'a', 6, 'ffm_tlt', 'mlp').record('test', 'accuracy', 0.7, n=10),
       Cell('a', 'b', 2, 'ffm', 'mlp').record('test', 'final_distance', 0.1)]


def test_a_cell_is_named_and_recovered_from_its_records():
  cell = Cell('dinov2', 'siglip2', 14, 'ffm_tlt', 'mlp')
  assert cell.id == 'dinov2__siglip2__L14__ffm_tlt__mlp' and Cell('a', 'a', None, 'lp', None).id == 'lp__a'
  record = cell.record('test', 'accuracy', 0.5, lr=0.01)
  assert tuple(record)[:8] == records.FIELDS and Cell.of(record) == cell


def test_filters_read_the_test_metric_of_matching_records():
  assert records.task_metric(RUN) == 'accuracy' and records.metric_name(RUN) == 'accuracy'
  assert records.scores(RUN, method='ffm_tlt') == {('a', 'b', 2): 0.8, ('b', 'a', 6): 0.7}
  assert records.test_values(RUN, 'final_distance') == {('a', 'b', 2): 0.1}
  assert records.layers(RUN) == [2, 6] and records.routes(RUN) == [('a', 'b'), ('b', 'a')]
  assert records.task_metric(RUN + [Cell('a', 'a', None, 'lp', None).record('test', 'miou', 0.3)]) == 'miou'


def test_tables_are_markdown_with_an_optional_title():
  assert records.table(['x', 'y'], [[1, records.pct(0.5)], ['–', records.pct(None)]]) == (
      '| x | y |\n|---|---|\n| 1 | 50.0 |\n| – | – |\n')
  assert records.table(['x'], [], 'T').startswith('### T\n\n| x |')
