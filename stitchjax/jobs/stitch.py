"""Job 'stitch': the paper's protocol over every cell of the config (stitchjax/protocol.py), then its
tables, plots and report (stitchjax/report.py) and analyses (stitchjax/analysis.py); with
`analysis_only=True`, the analyses alone, from the workdir."""
import pathlib

from stitchjax import analysis, distributed, protocol, report


def run(config):
  if not config.get('analysis_only'):
    records = protocol.run(config)
    if not distributed.is_main():  # process 0 writes and reports (stitchjax/distributed.py)
      return
    print(report.write(config.workdir, config.get('report_context')))
    print(f'{len(records)} records in {pathlib.Path(config.workdir) / "results.json"} (and results.csv); '
          f'tables in tables.md, plots accuracy_*.png')
  print(analysis.write(config.workdir))
