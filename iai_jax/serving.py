"""Serving an exported online step: the model as a StableHLO program.

``python -m iai_jax.export`` (:mod:`iai_jax.export`) writes a folder::

  DIR/manifest.json       what it is: format version, jax version and calling
                          convention, platforms, the frame size it serves
                          (resized and padded), the config, the classes
  DIR/step.jaxexport      the per-frame device step, serialized by jax.export
  DIR/weights.npz         the model's variables, the step's first argument
  DIR/initial_state.npz   the memory and 'no previous frame' record a video
                          starts from

The step is :func:`iai_jax.inference.frame_step` with everything explicit:
``step(weights, memory, prev, image, image_size, scale) -> (memory, cache,
detections)``: the previous frame's memory write (from ``prev``: its cache,
kept pixels, IDs), the network and the device post-processing of this
frame, on a frame zero-padded to the artifact's fixed padded size (one
artifact per padded size). Everything else - resizing and padding the
frame, the ID tracker, the output masks at the original size, the video's
tracks - is the host side this module shares with the in-process loop
(:class:`iai_jax.online.HostLoop`).

:class:`ExportedSegmenter` has the API and the outputs of
:class:`iai_jax.inference.OnlineSegmenter`::

  seg = ExportedSegmenter('exported/r50_384x640')
  for frame in frames:             # (H, W, 3) uint8 RGB
    instances = seg.step(frame)    # [{'id', 'label', 'category_id', ...}]
  tracks = seg.finish()

It needs jax (and jaxlib for the platform) and numpy, not Flax and not the
model's code: nothing here imports :mod:`iai_jax.models`. A folder that
cannot be served here (another format version, a jax too old or too new
for its calling convention, exported for other platforms, frames of another
padded size) is an :class:`ArtifactError` whose one line says what to do.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from iai_jax import online

FORMAT = 'iai_jax.exported_online_step'
FORMAT_VERSION = 1
MANIFEST = 'manifest.json'
STEP_FILE = 'step.jaxexport'
WEIGHTS_FILE = 'weights.npz'
STATE_FILE = 'initial_state.npz'
EXPORT_HINT = 'export it again with python -m iai_jax.export'


class ArtifactError(ValueError):
  """An exported step that cannot be used here; the message says why."""


def _hw(size) -> str:
  return f'{size[0]}x{size[1]}'


def this_platform() -> str:
  """The jax.export name of the default device's platform ('cpu', 'cuda',
  'rocm', 'tpu')."""
  return jax.export.default_export_platform()


def read_manifest(path: str) -> dict[str, Any]:
  """The folder's manifest, checked for its format and version."""
  path = os.path.abspath(path)
  file = os.path.join(path, MANIFEST)
  if not os.path.isfile(file):
    raise ArtifactError(f'{path} is not an exported iai_jax step (no '
                        f'{MANIFEST}); write one with python -m '
                        'iai_jax.export --output=DIR')
  try:
    with open(file) as f:
      manifest = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ArtifactError(f'{file} cannot be read: {e}') from e
  if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
    raise ArtifactError(f'{file} is not an iai_jax exported step manifest '
                        f'(format {FORMAT!r})')
  version = manifest.get('format_version')
  if version != FORMAT_VERSION:
    raise ArtifactError(
        f'{path} has format version {version}, this iai_jax reads version '
        f'{FORMAT_VERSION}: {EXPORT_HINT} (or use the iai_jax '
        f'{manifest.get("iai_jax", "?")} that wrote it)')
  return manifest


def check_compatible(path: str, manifest: dict[str, Any],
                     platform: str | None = None) -> None:
  """ArtifactError unless this jax can run the folder's step on
  ``platform`` (default: the default device's)."""
  ccv = manifest.get('calling_convention_version')
  lo = jax.export.minimum_supported_calling_convention_version
  hi = jax.export.maximum_supported_calling_convention_version
  if not isinstance(ccv, int) or not lo <= ccv <= hi:
    raise ArtifactError(
        f'{path} was exported by jax {manifest.get("jax", "?")} (calling '
        f'convention {ccv}); the installed jax {jax.__version__} runs '
        f'conventions {lo}..{hi}: {EXPORT_HINT} under this jax, or install '
        f'jax {manifest.get("jax", "?")}')
  platform = platform or this_platform()
  platforms = list(manifest.get('platforms') or [])
  if platform not in platforms:
    raise ArtifactError(
        f'{path} was exported for {",".join(platforms) or "no platform"}, '
        f'this machine runs {platform}: {EXPORT_HINT} '
        f'--platforms={",".join(sorted(set(platforms) | {platform}))}')


def _load_npz(path: str, name: str) -> list[np.ndarray]:
  file = os.path.join(path, name)
  try:
    with np.load(file) as z:
      return [z[f'a{i}'] for i in range(len(z.files))]
  except (OSError, KeyError, ValueError) as e:
    raise ArtifactError(f'{file} cannot be read: {e}') from e


class Artifact:
  """A loaded folder: ``manifest``, ``exported`` (a jax.export.Exported),
  ``weights`` (list of arrays), ``initial_state`` ((memory, prev) pytrees),
  ``config`` (ConfigDict), ``padded`` ((H, W))."""

  def __init__(self, path: str, frame_size=None, platform: str | None = None):
    import ml_collections
    self.path = os.path.abspath(path)
    self.manifest = read_manifest(self.path)
    check_compatible(self.path, self.manifest, platform)
    self.config = ml_collections.ConfigDict(self.manifest['config'])
    self.padded = tuple(self.manifest['padded_size'])
    if frame_size is not None:
      self.check_frame_size(*frame_size)
    file = os.path.join(self.path, STEP_FILE)
    try:
      with open(file, 'rb') as f:
        self.exported = jax.export.deserialize(bytearray(f.read()))
    except Exception as e:  # jax raises several types for a bad payload
      raise ArtifactError(f'{file} cannot be deserialized by jax '
                          f'{jax.__version__}: {str(e).splitlines()[0][:300]}'
                          f'; {EXPORT_HINT}') from e
    args, _ = jax.tree_util.tree_unflatten(
        self.exported.in_tree, list(range(len(self.exported.in_avals))))
    weights, memory, prev = args[0], args[1], args[2]
    self.weights = _load_npz(self.path, WEIGHTS_FILE)
    state = _load_npz(self.path, STATE_FILE)
    state_index = jax.tree_util.tree_leaves((memory, prev))
    if (len(self.weights) != len(weights) or len(state) != len(state_index)):
      raise ArtifactError(f'{self.path}: {WEIGHTS_FILE} / {STATE_FILE} do '
                          f'not fit {STEP_FILE}; {EXPORT_HINT}')
    for i, a in zip(list(weights) + state_index, self.weights + state):
      aval = self.exported.in_avals[i]
      if a.shape != aval.shape or a.dtype != aval.dtype:
        raise ArtifactError(f'{self.path}: an array of shape {a.shape} '
                            f'{a.dtype} where the step takes {aval.str_short()}'
                            f'; {EXPORT_HINT}')
    leaves = iter(state)
    self.initial_state = jax.tree_util.tree_map(lambda _: next(leaves),
                                                (memory, prev))

  @property
  def categories(self) -> list[tuple[int, str]]:
    return [(int(c), str(n)) for c, n in self.manifest.get('categories', [])]

  def check_frame_size(self, height: int, width: int) -> None:
    """ArtifactError unless frames of this size pad to the served size."""
    resized, padded = online.inference_size(self.config, height, width)
    if tuple(padded) != self.padded:
      raise ArtifactError(
          f'{self.path} serves frames padded to {_hw(self.padded)} (e.g. '
          f'{_hw(self.manifest["frame_size"])} video), a {height}x{width} '
          f'frame is resized to {_hw(resized)} and padded to {_hw(padded)}: '
          f'export one for it with python -m iai_jax.export '
          f'--input_size={height},{width}')


def load(path: str, frame_size=None, platform: str | None = None) -> Artifact:
  """Reads and checks an exported step (see :class:`Artifact`)."""
  return Artifact(path, frame_size, platform)


class ExportedSegmenter(online.HostLoop):
  """:class:`iai_jax.inference.OnlineSegmenter`'s loop on an exported step.

  ``ExportedSegmenter(path, category_ids=None, frame_size=None)``: the
  folder written by ``python -m iai_jax.export``; ``category_ids`` default
  to the manifest's classes; with ``frame_size`` (h, w) the folder is
  checked at once to serve videos of that size (otherwise at their first
  frame). ``step(frame)``, ``finish()``, ``reset()`` and the instances are
  :class:`iai_jax.online.HostLoop`'s.
  """

  def __init__(self, path: str, category_ids=None, frame_size=None):
    self.artifact = load(path, frame_size)
    if category_ids is None and self.artifact.categories:
      category_ids = [c for c, _ in self.artifact.categories]
    super().__init__(self.artifact.config, category_ids)
    self.class_names = [n for _, n in self.artifact.categories]
    self._call = jax.jit(self.artifact.exported.call)
    # the step's outputs are committed to the device: commit its inputs
    # too, or the first and the later frames compile apart
    self._device = jax.local_devices()[0]
    self._weights = jax.device_put(self.artifact.weights, self._device)
    self._state0 = jax.device_put(self.artifact.initial_state, self._device)

  def compilations(self) -> int:
    """Programs compiled for the step (one: the artifact's padded size)."""
    return self._call._cache_size()

  def _start(self, height, width):
    self.artifact.check_frame_size(height, width)  # before any state changes
    super()._start(height, width)

  def _initial_state(self, padded):
    return self._state0

  def _run(self, memory, prev, image, image_size, scale):
    memory, prev = jax.device_put((memory, prev), self._device)
    return self._call(self._weights, memory, prev, image, image_size, scale)
