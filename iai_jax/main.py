"""Command-line entry point: parses flags and hands over to the libraries.

  python -m iai_jax.main --config=configs/synthetic.py     # train, then evaluate
  python -m iai_jax.main --mode=train --config=configs/ytvis19.py --workdir=DIR
  python -m iai_jax.main --mode=eval --config=... --workdir=DIR [--checkpoint=C]
  python -m iai_jax.main --mode=predict --config=... --checkpoint=C \
      --input=VIDEO.mp4|FRAME_FOLDER --output=DIR [--gif] [--png_masks]
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
_MODE = flags.DEFINE_enum('mode', 'train_and_eval', MODES, 'What to run.')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Checkpoints, logs and results go here '
    '(default: runs/<dataset name>).')
_JSON = flags.DEFINE_bool('json', False,
                          'summary: print one JSON object instead of a table.')
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, 'eval/predict: a training workdir, one of its '
    'checkpoints/<step> folders or a converted checkpoint (default for eval: '
    'the latest checkpoint of --workdir).')
_SPLIT = flags.DEFINE_enum('split', None, ['heldout', 'valid'],
                           'eval: the split to run (default: heldout if the '
                           'config holds some training videos out, else valid).')
_INPUT = flags.DEFINE_string('input', None, 'predict: a video file or a folder '
                             'of frames.')
_OUTPUT = flags.DEFINE_string('output', None, 'predict: output folder.')
_GIF = flags.DEFINE_bool('gif', False, 'predict: also write an overlay GIF; '
                         'eval: write the overlay GIF of the first video '
                         '(train_and_eval always does).')
_PNG = flags.DEFINE_bool('png_masks', False,
                         'predict: also write indexed PNG masks per frame.')
_FPS = flags.DEFINE_float('fps', None, 'predict: frame rate of a frame folder '
                          '(default 10) or override of the video\'s.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:  # orbax logs every save at INFO
    from absl import logging
    logging.set_verbosity(logging.WARNING)
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
  import os
  from iai_jax import predict
  from iai_jax.data import tfds_builder, vis_json
  workdir = _WORKDIR.value or os.path.join('runs', config.dataset.name)
  try:
    if mode == 'predict':
      if not (_CHECKPOINT.value and _INPUT.value and _OUTPUT.value):
        raise app.UsageError('--mode=predict needs --checkpoint, --input and '
                             '--output')
      variables = predict.restore_variables(config, _CHECKPOINT.value)
      predict.predict_video(config, variables, _INPUT.value, _OUTPUT.value,
                            gif=_GIF.value, png=_PNG.value, fps=_FPS.value)
      return
    tfds_builder.ensure_records(config)
    if mode in ('train', 'train_and_eval'):
      from iai_jax import train
      print(f'workdir: {os.path.abspath(workdir)}')
      state, _ = train.train(config, workdir)
      if mode == 'train':
        return
      import jax
      variables = jax.device_get({'params': state.params,
                                  'batch_stats': state.batch_stats})
    else:
      variables = predict.restore_variables(config, _CHECKPOINT.value or workdir)
    predict.evaluate_split(config, variables, workdir, _SPLIT.value,
                           overlay=_GIF.value or mode == 'train_and_eval')
  except (tfds_builder.DatasetMissingError, tfds_builder.RecordsMissingError,
          predict.PredictError, vis_json.VisDataError) as e:
    sys.exit(f'error: {e}')


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
