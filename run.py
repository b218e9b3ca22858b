"""stitchjax command line: `python run.py --config configs/X.py [--config.field=value ...]`.

The config's `job` names what runs; results land in `config.workdir`.
"""
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A configs/*.py file.', lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # orbax logs every file it touches at INFO; --verbosity=0 shows it
    logging.set_verbosity(logging.WARNING)
  if _CONFIG.value.get('distributed'):  # one process per host or GPU node: stitchjax/distributed.py
    from stitchjax import distributed
    distributed.initialize(_CONFIG.value)
  from stitchjax import jobs
  jobs.run(_CONFIG.value)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
