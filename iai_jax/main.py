"""Command-line entry point: parses flags and hands over to the libraries.

  python -m iai_jax.main --mode=summary --config=configs/ytvis19.py [--json]

Config overrides go on the command line: ``--config.model.dtype=bfloat16``;
an unknown key is an error that names it.
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

MODES = ('summary', 'train', 'eval', 'train_and_eval', 'predict')

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'A configs/*.py file, optionally with ":variants".',
    lock_config=True)
_MODE = flags.DEFINE_enum('mode', 'summary', MODES, 'What to run.')
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Checkpoints and logs go here.')
_JSON = flags.DEFINE_bool('json', False,
                          'summary: print one JSON object instead of a table.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  config = _CONFIG.value
  if config is None:
    raise app.UsageError('--config is required, e.g. '
                         '--config=configs/ytvis19.py (or configs/ytvis19.py:tiny)')
  mode = _MODE.value
  if mode == 'summary':
    from iai_jax import summary
    result = summary.summary(config)
    if _JSON.value:
      out = {'total_params': result['total_params'],
             'groups': {k: v['total'] for k, v in result['groups'].items()},
             'gflops_per_frame': result['gflops_per_frame']}
      print(json.dumps(out))
    else:
      print(summary.format_table(result, config))
    return
  sys.exit(f'--mode={mode} is not available in this version of iai_jax yet: '
           'only --mode=summary is. Training, evaluation and prediction are '
           'being added (see the project issues).')


def _check_argv(argv) -> None:
  """Fail early, with a readable message, on a bad --config or override."""
  from iai_jax import config_lib
  spec = None
  overrides = []
  for arg in argv[1:]:
    if arg.startswith('--config='):
      spec = arg[len('--config='):]
    elif arg.startswith('--config.'):
      overrides.append(arg[len('--config.'):].split('=', 1)[0])
  if spec is None:
    return
  try:
    config = config_lib.load_config_file(spec)
    for key in overrides:
      config_lib.check_override_key(config, key)
  except ValueError as e:
    sys.exit(f'error: {e}')


def run():
  _check_argv(sys.argv)
  app.run(main)


if __name__ == '__main__':
  run()
