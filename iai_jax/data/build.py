"""Convert a configured VIS dataset to TFDS array_record files.

  python -m iai_jax.data.build --config=configs/ytvis19.py [--overwrite]

The synthetic dataset (``configs/synthetic.py``) is generated first when it
is missing.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'A configs/*.py file, optionally with ":variants".',
    lock_config=True)
_OVERWRITE = flags.DEFINE_bool('overwrite', False,
                               'Rebuild even if the records exist.')


def main(argv):
  del argv
  from iai_jax.data import tfds_builder
  from iai_jax.data import vis_json
  config = _CONFIG.value
  if config is None:
    raise app.UsageError('--config is required, e.g. --config=configs/ytvis19.py')
  if config.dataset.synthetic.num_videos > 0:
    from iai_jax.data import synthetic
    synthetic.ensure_synthetic(config)
  try:
    tfds_builder.build(config, overwrite=_OVERWRITE.value)
  except vis_json.VisDataError as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
