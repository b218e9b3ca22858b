"""report.md's claims, counted from hand-built records whose answers are known, and the files write() leaves."""
import json

from stitchjax import report
from stitchjax.records import Cell

N = 400  # one standard error at 90% accuracy: 1.5 points


def _records(metric='accuracy'):
  """a→b with its self-stitches at L2 and L4; the values decide every claim below."""
  acc = {('a', 'b', 'ffm_tlt'): (0.90, 0.56), ('a', 'a', 'ffm_tlt'): (0.50, 0.55), ('b', 'b', 'ffm_tlt'): (0.52, 0.50),
         ('a', 'b', 'tlt'): (0.80, 0.66), ('a', 'b', 'ffm'): (0.70, 0.40), ('a', 'b', 'lfm'): (0.60, 0.45)}
  out = [Cell(b, b, None, 'lp', None).record('test', metric, v, n=N) for b, v in (('a', 0.70), ('b', 0.85))]
  for (s, t, method), values in acc.items():
    for layer, v in zip((2, 4), values):
      out.append(Cell(s, t, layer, method, 'mlp').record('test', metric, v, n=N))
  distances = {('ffm', 2): (0.3, 0.2), ('lfm', 2): (0.1, 0.5), ('ffm', 4): (0.3, 0.6), ('lfm', 4): (0.1, 0.5)}
  for (method, layer), (at_layer, final) in distances.items():
    cell = Cell('a', 'b', layer, method, 'mlp')
    out += [cell.record('test', 'layer_distance', at_layer), cell.record('test', 'final_distance', final)]
  return out


def test_each_claim_counts_the_layers_that_support_it():
  md = report.findings(_records(), 'mlp', context='A tiny run.')
  assert md.startswith('# What the run shows\n\nA tiny run.\n') and 'over n = 400 test examples' in md
  assert ('beats both self-stitches by more than two standard errors at 1 of 2 layers (L2).') in md
  assert 'FFM reaches the smaller final-feature distance at 1 of 2 layers (at L2: 0.2 vs 0.5).' in md
  assert 'LFM reaches the smaller distance at the stitch point at 2 of 2 layers.' in md
  assert 'Its probe is the more accurate at 1 of 2 layers.' in md
  assert 'FFM→TLT is ahead of TLT from a random stitch at 1 of 2 layers; at the shallowest, L2, by +10.0 points.' in md
  assert 'the best stitched model (L2) reaches 90.0% against 70.0% (a) and 85.0% (b); above a and b by more' in md


def test_miou_claims_have_no_standard_errors():
  md = report.findings(_records('miou'), 'mlp')
  assert 'beats both self-stitches (mIoU: no standard error) at 2 of 2 layers' in md  # 0.56 > 0.55 counts
  assert 'Its decoder scores the higher mIoU at 1 of 2 layers.' in md and 'standard error is about' not in md


def test_write_leaves_tables_a_plot_and_the_report(tmp_path):
  (tmp_path / 'results.json').write_text(json.dumps(_records()))
  summary = report.write(tmp_path)
  assert '| a→b | ffm_tlt | 90.0 | 56.0 |' in summary and '| b alone | lp | 85.0 | 85.0 |' in summary
  tables = (tmp_path / 'tables.md').read_text()
  assert all(title in tables for title in ('Table 1', 'Table 2', 'Table 4', 'Figure 2'))
  assert (tmp_path / 'accuracy_mlp.png').stat().st_size > 1000
  assert (tmp_path / 'report.md').read_text() == report.findings(_records(), 'mlp')
