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

from iai_jax import cli

MODES = ('summary', 'train', 'eval', 'train_and_eval', 'predict')

_CONFIG = cli.define_config_flag()
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
_OVERWRITE = flags.DEFINE_bool(
    'overwrite', False, 'predict: replace the outputs of an earlier run in '
    '--output (as a whole) instead of refusing a non-empty folder.')
_ALLOW_SCHEDULE_CHANGE = flags.DEFINE_bool(
    'allow_schedule_change', False, 'train: resume a run with changed '
    'schedule keys (train.steps, epochs, lr, warmup_*, decay_epochs, '
    'weight_decay, backbone_*_mult, grad_clip); model and data keys can '
    'never change on resume.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cli.quiet_logs()
  config = cli.config(_CONFIG)
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
  from iai_jax import checkpoints, config_lib, eval_split, predict
  from iai_jax.data import paths, pipeline, tfds_builder, vis_json
  workdir = _WORKDIR.value or os.path.join('runs', config.dataset.name)
  try:
    if mode == 'predict':
      if not (_CHECKPOINT.value and _INPUT.value and _OUTPUT.value):
        raise app.UsageError('--mode=predict needs --checkpoint, --input and '
                             '--output')
      # bad input and output fail before the checkpoint is read
      predict.check_paths(_INPUT.value, _OUTPUT.value, _OVERWRITE.value)
      variables = checkpoints.restore_variables(config, _CHECKPOINT.value)
      predict.predict_video(config, variables, _INPUT.value, _OUTPUT.value,
                            gif=_GIF.value, png=_PNG.value, fps=_FPS.value,
                            overwrite=_OVERWRITE.value)
      return
    training = mode in ('train', 'train_and_eval')
    if training:  # fail before any data or model work: a mesh for other
      # devices (known here unless distributed), a run this config cannot
      # resume
      if not config.train.distributed:
        import jax

        from iai_jax import train
        train.mesh_shape(config.train.mesh_shape, config.train.mesh_axes,
                         jax.device_count())
      checkpoints.check_workdir_config(config, workdir,
                                       _ALLOW_SCHEDULE_CHANGE.value)
    tfds_builder.ensure_records(config)
    if training:
      from iai_jax import train
      print(f'workdir: {os.path.abspath(workdir)}')
      state, _ = train.train(
          config, workdir, allow_schedule_change=_ALLOW_SCHEDULE_CHANGE.value)
      if mode == 'train':
        return
      import jax
      variables = jax.device_get(state.variables())
    else:
      variables = checkpoints.restore_variables(config,
                                                _CHECKPOINT.value or workdir)
    eval_split.evaluate_split(config, variables, workdir, _SPLIT.value,
                           overlay=_GIF.value or mode == 'train_and_eval')
  except (paths.DatasetMissingError, tfds_builder.RecordsMissingError,
          predict.PredictError, checkpoints.CheckpointError,
          vis_json.VisDataError, pipeline.TrainingDataError,
          config_lib.ConfigError) as e:
    sys.exit(f'error: {e}')


def run():
  cli.run(main)


if __name__ == '__main__':
  run()
