"""A trained run's detector as an initialisation for other runs.

  python scripts/detector_init.py --run=runs/synthetic \
      --config=configs/synthetic.py --output=runs/synthetic_detector

The recipe trains IAI from a CondInst detector (COCO weights): backbone,
FPN and heads come from the detector, the association block and the ID head
start fresh. This writes the same kind of checkpoint from a run of ours:
every variable of the run's last checkpoint except the association block
(with the ID bank) and the ID head, which ``--config.init_from=OUTPUT``
then leaves at their fresh initialisation (so the number of ID slots, the
memory switches and the ID-bank size may differ from the run's). Used by
``scripts/ablate.py --init_from`` so that every ablation variant starts from
the same detector. With ``--whole`` every variable is kept (a trained IAI as
the common start of fine-tuning runs; the number of ID slots must then be
the run's).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

def define_flags():
  """The command-line flags; defined only when the script runs, so that a
  test can import its functions beside other scripts with a --run flag."""
  flags.DEFINE_string('run', None, 'Training run (workdir).', required=True)
  flags.DEFINE_string('config', 'configs/synthetic.py',
                      'Config file[:variants] the run was trained with.')
  flags.DEFINE_string('output', None, 'Folder to write.', required=True)
  flags.DEFINE_bool('overwrite', False, 'Replace OUTPUT.')
  flags.DEFINE_bool('whole', False, 'Keep every variable (association '
                    'block and ID head too): a whole trained IAI as '
                    'the common start of fine-tuning runs.')


def detector_part(variables):
  """(the variables without association block and ID head, their names)."""
  from iai_jax import checkpoints, convert
  flat = checkpoints.flatten(variables)
  keep = {p: x for p, x in flat.items()
          if not convert._condinst_fresh(p)}
  dropped = checkpoints.collapse_paths([p for p in flat if p not in keep],
                                       flat)
  return checkpoints.unflatten(keep), dropped


def main(argv):
  del argv
  from iai_jax import checkpoints, config_lib
  spec = flags.FLAGS.config
  path, _, arg = spec.partition(':')
  config = config_lib.load_config_file(
      os.path.join(ROOT, path) + (f':{arg}' if arg else ''))
  variables = checkpoints.restore_variables(config, flags.FLAGS.run)
  if flags.FLAGS.whole:
    part, dropped = variables, []
  else:
    part, dropped = detector_part(variables)
  checkpoints.save_variables(
      flags.FLAGS.output, part,
      {'source': 'iai_jax run (detector part)', 'run': os.path.abspath(
          flags.FLAGS.run), 'config': spec, 'fresh': dropped},
      overwrite=flags.FLAGS.overwrite)
  print(f'wrote {flags.FLAGS.output}: '
        f'{len(checkpoints.flatten(part))} arrays; '
        f'left out (fresh in the runs that start from it): '
        f'{", ".join(dropped)}')
  return 0


if __name__ == '__main__':
  define_flags()
  app.run(main)
