"""Job 'stitch': the paper's protocol over every cell of the config (stitchjax/protocol.py), then its
tables, plots and report (stitchjax/report.py) and analyses (stitchjax/analysis.py); with
`analysis_only=True`, the analyses alone, from the workdir. With layers='scout:K' the scout
(stitchjax/jobs/scout.py) chooses the layers first, unless the workdir has its choice already; where the
workdir holds the scout's proxies, they are checked against the results (stitchjax/agreement.py)."""
import pathlib

from stitchjax import agreement, analysis, cells, distributed, protocol, report
from stitchjax.jobs import scout


def run(config):
  if not config.get('analysis_only'):
    if cells.scout_pending(config):
      scout.measure(config)
    records = protocol.run(config)
    if not distributed.is_main():  # process 0 writes and reports (stitchjax/distributed.py)
      return
    agreement.update(config.workdir)
    print(report.write(config.workdir, config.get('report_context')))
    print(f'{len(records)} records in {pathlib.Path(config.workdir) / "results.json"} (and results.csv); '
          f'tables in tables.md, plots accuracy_*.png')
  print(analysis.write(config.workdir))
