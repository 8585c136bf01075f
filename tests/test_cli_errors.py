"""Bad config values on the command line are one line and exit 1, before
any data or model work (issue 17: several were tracebacks, steps=-5 trained
nothing and exited 0)."""

import os
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from iai_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/synthetic.py:tiny'


def _config_error(override):
  """What ``cli.config`` exits with for ``--config.<override>`` (parsed by
  absl as the commands parse it, with their own flag values)."""
  argv = ['prog', f'--config={os.path.join(REPO, CONFIG)}', override]
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', None, '', flag_values=fv,
                                           lock_config=True, sys_argv=argv)
  fv(argv)
  with pytest.raises(SystemExit) as e:
    cli.config(holder)
  return str(e.value.code)


@pytest.mark.parametrize('override, message', [
    ('--config.input.size=abc', "error: input.size=('abc',): give (short "
     'side, long side) as two positive integers, e.g. --config.input.size='
     '"(360, 640)"'),
    ('--config.train.batch_size=0',
     'error: train.batch_size=0 must be a positive integer'),
    ('--config.train.batch_size=-2',
     'error: train.batch_size=-2 must be a positive integer'),
    ('--config.train.clip_len=0',
     'error: train.clip_len=0 must be a positive integer'),
    ('--config.model.num_classes=0', 'error: model.num_classes=0 must be >= 1'),
    ('--config.train.checkpoint_every=0',
     'error: train.checkpoint_every=0 must be a positive integer'),
    ('--config.train.steps=-5',
     'error: train.steps=-5 must be an integer >= 0'),
    ('--config.train.mesh_shape=(2,2)', 'error: train.mesh_shape=(2, 2) must '
     'be one positive integer (or one -1, "the rest") per axis of '
     "train.mesh_axes=('data',), e.g. --config.train.mesh_shape=\"(-1,)\""),
])
def test_bad_values_are_one_line_errors(override, message):
  assert _config_error(override) == message


def test_mesh_for_other_devices_fails_before_any_work(tmp_path):
  """The device count is known only in the command: one line, exit 1, and
  no data was generated or read."""
  env = dict(os.environ, PYTHONPATH=REPO)
  run = subprocess.run(
      [sys.executable, '-m', 'iai_jax.main', '--mode=train',
       f'--config={CONFIG}', f'--workdir={tmp_path / "w"}',
       f'--config.dataset.root={tmp_path / "data"}',
       '--config.train.mesh_shape=(3,)'],
      capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
  assert run.returncode == 1
  assert run.stderr == (
      'error: train.mesh_shape=(3,) does not cover the 1 devices: their '
      'product must be the device count; -1 stands for "the rest", e.g. '
      '--config.train.mesh_shape="(-1,)"\n'), run.stderr
  assert not (tmp_path / 'data').exists() and not (tmp_path / 'w').exists()
