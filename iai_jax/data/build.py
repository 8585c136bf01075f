"""Convert a configured VIS dataset to TFDS array_record files.

  python -m iai_jax.data.build --config=configs/ytvis19.py [--overwrite]

The synthetic dataset (``configs/synthetic.py``) is generated first when it
is missing.
"""

from __future__ import annotations

import sys

from absl import flags

from iai_jax import cli

_CONFIG = cli.define_config_flag()
_OVERWRITE = flags.DEFINE_bool('overwrite', False,
                               'Rebuild even if the records exist.')


def main(argv):
  del argv
  from iai_jax.data import paths, tfds_builder, vis_json
  config = cli.config(_CONFIG)
  try:
    paths.ensure_annotations(config)
    tfds_builder.build(config, overwrite=_OVERWRITE.value)
  except (vis_json.VisDataError, paths.DatasetMissingError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  cli.run(main)
