"""Export the online step for serving without the model's Python code.

  python -m iai_jax.export --config=configs/ytvis19.py --checkpoint=C \
      --output=DIR [--input_size=360,640] [--platforms=cpu,cuda]

Writes the per-frame device step (:func:`iai_jax.inference.frame_step`:
the previous frame's memory write, the network, the device
post-processing) with ``jax.export`` as a serialized StableHLO program,
its weights, the state a video starts from and a manifest; the folder's
layout and :class:`iai_jax.serving.ExportedSegmenter`, which runs it, are
described in :mod:`iai_jax.serving`.

The step takes frames zero-padded to one fixed size: the padded size of
``--input_size`` (a video frame's height and width; default the config's
``input.size``, 360x640 -> 384x640). Every video whose frames pad to that
size is served by it (any 16:9 video for the default); other sizes need an
artifact of their own.

``--platforms`` (jax.export names: cpu, cuda, rocm, tpu; default this
machine's) exports one program for all of them: the backend-specific
kernels (:mod:`iai_jax.models.kernels`) are then chosen when the program
runs, the CPU ones on CPU and XLA's ops elsewhere.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import time
from typing import Any, Sequence

PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')


def memory_fields(memory) -> dict[str, Any]:
  """The :class:`Memory` as a plain dict (what the exported step takes)."""
  return {f.name: getattr(memory, f.name) for f in dataclasses.fields(memory)}


def step_function(model, config, treedef):
  """``step(weights, memory, prev, image, image_size, scale)``: the exported
  signature around :func:`iai_jax.inference.frame_step` (``weights`` the
  variables' leaves in ``treedef`` order, ``memory`` a dict)."""
  import jax

  from iai_jax import inference
  from iai_jax.models import Memory

  def step(weights, memory, prev, image, image_size, scale):
    variables = jax.tree_util.tree_unflatten(treedef, weights)
    memory, cache, dets = inference.frame_step(
        variables, Memory(**memory), prev, image, image_size, scale,
        model=model, config=config)
    return memory_fields(memory), cache, dets

  return step


def check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
  """The platforms, checked (ValueError naming a bad one)."""
  platforms = tuple(dict.fromkeys(p.strip().lower() for p in platforms if p))
  if not platforms:
    raise ValueError(f'--platforms: give at least one of {",".join(PLATFORMS)}')
  bad = [p for p in platforms if p not in PLATFORMS]
  if bad:
    raise ValueError(f'--platforms: unknown {",".join(bad)}; choose from '
                     f'{",".join(PLATFORMS)}')
  return platforms


def _save_npz(file: str, arrays, compressed: bool = False) -> int:
  import numpy as np
  save = np.savez_compressed if compressed else np.savez
  save(file, **{f'a{i}': np.asarray(a) for i, a in enumerate(arrays)})
  return os.path.getsize(file)


def export_step(config, variables, output: str, *, frame_size=None,
                platforms: Sequence[str] | None = None, categories=None,
                source: str = '', config_spec: str = '',
                overwrite: bool = False) -> dict[str, Any]:
  """Writes the exported step for frames of ``frame_size`` to ``output``.

  Args:
    config: the full config (model, input, infer).
    variables: the model's {'params', 'batch_stats'}.
    output: the folder to write (see :mod:`iai_jax.serving`).
    frame_size: (h, w) of the videos to serve; default ``input.size``.
    platforms: jax.export platform names; default this machine's.
    categories: [(category id, name)] in label order; default placeholders.
    source, config_spec: recorded in the manifest (checkpoint, --config).
  Returns:
    The manifest (also in ``output/manifest.json``).
  """
  import jax
  import jaxlib
  import numpy as np
  from jax import export as jax_export

  import iai_jax
  from iai_jax import inference, online, serving
  from iai_jax.models import kernels

  platforms = check_platforms(platforms or (serving.this_platform(),))
  frame_size = tuple(int(x) for x in (frame_size or config.input.size))
  if len(frame_size) != 2 or min(frame_size) < 1:
    raise ValueError(f'--input_size must be two positive integers H,W, got '
                     f'{frame_size}')
  output = os.path.abspath(output)
  if os.path.exists(os.path.join(output, serving.MANIFEST)) and not overwrite:
    raise FileExistsError(f'{output} already holds an exported step; choose '
                          'another --output or pass --overwrite')
  resized, padded = online.inference_size(config, *frame_size)
  seg = inference.OnlineSegmenter(config, variables)
  memory, prev = seg._initial_state(padded)
  state = (memory_fields(memory), prev)
  weights, treedef = jax.tree_util.tree_flatten(variables)
  spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
  args = ([spec(w) for w in weights], *jax.tree_util.tree_map(spec, state),
          jax.ShapeDtypeStruct((*padded, 3), np.uint8),
          jax.ShapeDtypeStruct((2,), np.int32),
          jax.ShapeDtypeStruct((4,), np.float32))
  t = time.time()
  # a fresh function: jit caches traces by function, and the kernels are
  # chosen while tracing
  fn = jax.jit(step_function(seg.model, config, treedef))
  with kernels.for_platforms(platforms) as kind:
    exported = jax_export.export(fn, platforms=platforms)(*args)
  payload = exported.serialize()
  export_s = time.time() - t

  os.makedirs(output, exist_ok=True)
  for name in (serving.MANIFEST, serving.STEP_FILE, serving.WEIGHTS_FILE,
               serving.STATE_FILE):
    if os.path.exists(os.path.join(output, name)):
      os.remove(os.path.join(output, name))
  with open(os.path.join(output, serving.STEP_FILE), 'wb') as f:
    f.write(payload)
  weights_bytes = _save_npz(os.path.join(output, serving.WEIGHTS_FILE),
                            jax.device_get(weights))
  state_bytes = _save_npz(os.path.join(output, serving.STATE_FILE),
                          jax.device_get(jax.tree_util.tree_leaves(state)),
                          compressed=True)
  if categories is None:
    categories = [(k + 1, f'class {k}')
                  for k in range(config.model.num_classes)]
  manifest = {
      'format': serving.FORMAT,
      'format_version': serving.FORMAT_VERSION,
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      'iai_jax': iai_jax.__version__,
      'jax': jax.__version__,
      'jaxlib': jaxlib.__version__,
      'calling_convention_version': exported.calling_convention_version,
      'platforms': list(exported.platforms),
      'kernels': kind,
      'frame_size': list(frame_size),
      'resized_size': list(resized),
      'padded_size': list(padded),
      'input': {'size': list(config.input.size),
                'size_divisor': int(config.input.size_divisor)},
      'dtype': config.model.dtype,
      'config_spec': config_spec,
      'source': source,
      'categories': [[int(c), str(n)] for c, n in categories],
      'files': {
          serving.STEP_FILE: len(payload),
          serving.WEIGHTS_FILE: weights_bytes,
          serving.STATE_FILE: state_bytes,
      },
      'weights': [jax.tree_util.keystr(p) for p, _ in
                  jax.tree_util.tree_flatten_with_path(variables)[0]],
      'step': ('step(weights, memory, prev, image (H, W, 3) uint8 padded, '
               'image_size (2,) int32 resized h w, scale (4,) float32 '
               'resized/original w h w h) -> (memory, cache, detections)'),
      'export_s': round(export_s, 2),
      'config': json.loads(config.to_json()),
  }
  with open(os.path.join(output, serving.MANIFEST), 'w') as f:
    json.dump(manifest, f, indent=1)
    f.write('\n')
  return manifest


def _define_flags():
  from absl import flags

  from iai_jax import cli
  config = cli.define_config_flag()
  flags.DEFINE_string('checkpoint', None, 'A training workdir, one of its '
                      'checkpoints/<step> folders or a converted checkpoint.')
  flags.DEFINE_string('output', None, 'The folder to write.')
  flags.DEFINE_list('input_size', None, 'H,W of the video frames to serve '
                    '(default: the config\'s input.size); the artifact serves '
                    'every frame size that pads to the same size.')
  flags.DEFINE_list('platforms', None, 'jax.export platforms, e.g. cpu,cuda '
                    '(default: this machine\'s).')
  flags.DEFINE_bool('overwrite', False, 'Replace an exported step in --output.')
  flags.mark_flags_as_required(['checkpoint', 'output'])
  return config


def main(argv, config_holder) -> None:
  from absl import app, flags

  from iai_jax import checkpoints, cli, serving
  from iai_jax.data import paths
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {" ".join(argv[1:])}')
  FLAGS = flags.FLAGS
  cli.quiet_logs()
  config = cli.config(config_holder)
  try:
    platforms = check_platforms(FLAGS.platforms) if FLAGS.platforms else None
    size = None
    if FLAGS.input_size:
      try:
        size = tuple(int(x) for x in FLAGS.input_size)
      except ValueError:
        size = ()
      if len(size) != 2 or min(size) < 1:
        raise ValueError('--input_size must be two positive integers H,W, '
                         f'got {",".join(FLAGS.input_size)}')
    t = time.time()
    variables = checkpoints.restore_variables(config, FLAGS.checkpoint,
                                              log=lambda *_: None)
    spec = next((a[len('--config='):] for a in sys.argv
                 if a.startswith('--config=')), '')
    manifest = export_step(
        config, variables, FLAGS.output, frame_size=size, platforms=platforms,
        categories=paths.categories(config), source=os.path.abspath(
            FLAGS.checkpoint), config_spec=spec, overwrite=FLAGS.overwrite)
  except (ValueError, FileExistsError, checkpoints.CheckpointError,
          serving.ArtifactError) as e:
    sys.exit(f'error: {e}')
  total = sum(manifest['files'].values())
  print(f'exported the online step for {",".join(manifest["platforms"])} '
        f'(frames padded to {manifest["padded_size"][0]}x'
        f'{manifest["padded_size"][1]}, kernels {manifest["kernels"]}) to '
        f'{os.path.abspath(FLAGS.output)}: {total / 2**20:.1f} MiB in '
        f'{time.time() - t:.1f} s')


if __name__ == '__main__':
  from iai_jax import cli as _cli
  _holder = _define_flags()
  _cli.run(lambda argv: main(argv, _holder))
