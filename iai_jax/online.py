"""The host side of the online loop, shared by every way of running the step.

Nothing here imports the Flax model: a served artifact
(:class:`iai_jax.serving.ExportedSegmenter`) runs this with an exported
step, the in-process :class:`iai_jax.inference.OnlineSegmenter` with the
jitted :func:`iai_jax.inference.frame_step`. What they share:

* frames: :func:`check_frame`, :func:`inference_size` (the resized and the
  padded size of a frame), :func:`prepare_frame` (resize and zero-pad on the
  host, :mod:`iai_jax.preprocess`);
* :class:`HostLoop`: per video the tracker and the video's accumulator
  (:mod:`iai_jax.tracking`), per frame the device step (a subclass's
  :meth:`HostLoop._run`), the IDs, the next frame's pending memory write
  (memory in, memory out: the loop keeps both between calls), the output
  masks at the original size and the instances;
* :func:`original_masks`: the output masks at the original frame size
  (probabilities cropped to the resized frame, bilinearly resized, > 0.5,
  each kept detection minus the pixels of the earlier kept ones), a second
  jitted call, one compilation per video size.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from iai_jax import preprocess, tracking


# ----------------------------------------------------------------- frames
def inference_size(config, height: int, width: int
                   ) -> tuple[tuple[int, int], tuple[int, int]]:
  """((resized h, w), (padded H, W)) of a frame of the given size."""
  short, long = config.input.size
  resized = preprocess.rescale_size(height, width, short, long)
  return resized, preprocess.padded_size(*resized, config.input.size_divisor)


def prepare_frame(frame: np.ndarray, resized, padded) -> np.ndarray:
  """(h0, w0, 3) uint8 RGB -> (H, W, 3) uint8, resized and zero padded."""
  return preprocess.pad_image(preprocess.resize_image(frame, resized), padded)


def check_frame(frame) -> np.ndarray:
  """The frame as an (H, W, 3) uint8 array, or a ValueError saying why not
  and how to pass it."""
  frame = np.asarray(frame)
  shape, dtype = frame.shape, frame.dtype
  want = 'a frame must be an (H, W, 3) uint8 RGB array'
  if frame.ndim == 4 and shape[0] == 1:
    raise ValueError(f'{want}, got a batch of shape {shape}: pass one frame '
                     'at a time (frames[0])')
  if frame.ndim == 3 and shape[0] in (3, 4) and shape[2] not in (3, 4):
    raise ValueError(f'{want}, got {shape}, channels first: pass '
                     'frame.transpose(1, 2, 0)')
  if frame.ndim == 2:
    raise ValueError(f'{want}, got a grey {shape} image: pass '
                     'np.stack([frame] * 3, axis=-1)')
  if frame.ndim == 3 and shape[2] == 4:
    raise ValueError(f'{want}, got {shape} with an alpha channel: pass '
                     'frame[..., :3]')
  if frame.ndim != 3 or shape[2] != 3:
    raise ValueError(f'{want}, got shape {shape}')
  if dtype != np.uint8:
    raise ValueError(f'{want}, got dtype {dtype}: pass values 0..255 as '
                     'uint8 (e.g. (frame * 255).round().astype(np.uint8) for '
                     'floats in [0, 1])')
  if min(shape[:2]) < 1:
    raise ValueError(f'{want} with at least one pixel, got {shape}')
  return frame


# ----------------------------------------------------------------- masks
def _bilinear_taps(n_in: int, n_out: int):
  """Half-pixel bilinear (torch ``align_corners=False``) taps of one axis:
  (lower index, upper index, upper weight), float32 as torch computes them."""
  scale = np.float32(n_in) / np.float32(n_out)
  src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale \
      - np.float32(0.5)
  src = np.maximum(src, np.float32(0.0))
  lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  frac = np.clip(src - lo.astype(np.float32), 0.0, 1.0).astype(np.float32)
  hi = np.minimum(lo + 1, n_in - 1)
  return lo, hi, frac


def resize_bilinear(x, size):
  """(D, h, w) -> (D, H, W) half-pixel bilinear, no antialiasing."""
  d, h, w = x.shape
  lo, hi, f = _bilinear_taps(h, size[0])
  x = x[:, lo, :] * (1 - f)[None, :, None] + x[:, hi, :] * f[None, :, None]
  lo, hi, f = _bilinear_taps(w, size[1])
  return x[:, :, lo] * (1 - f)[None, None, :] + x[:, :, hi] * f[None, None, :]


def original_masks(prob, keep, resized, original, thr: float = 0.5):
  """Output masks (D, H0, W0) bool at the original frame size.

  ``prob`` (D, H, W) padded-frame probabilities; ``resized`` / ``original``
  static (h, w). Each kept detection's mask minus the pixels of the earlier
  kept ones; the others all False.
  """
  crop = prob[:, :resized[0], :resized[1]]
  masks = resize_bilinear(crop, original) > thr

  def body(free, xs):
    mask, ok = xs
    new = mask & free & ok
    return free & ~new, new

  free0 = jnp.ones(tuple(original), bool)
  _, out = jax.lax.scan(body, free0, (masks, keep))
  return out


# ----------------------------------------------------------------- the loop
HOST_FIELDS = ('found', 'valid', 'score', 'cls_prob', 'ctr', 'id_prob', 'box')


class HostLoop:
  """Streaming video instance segmentation, one frame at a time.

  ``step(frame)`` returns this frame's instances, each a dict with 'id'
  (stable through the video), 'label' (0-based class), 'category_id' (the
  dataset's id when known), 'score', 'box' (x1, y1, x2, y2 in original
  pixels) and 'mask' ((h0, w0) bool). ``finish()`` returns the video's
  predictions (see :meth:`iai_jax.tracking.VideoAccumulator.finish`) and
  ``reset()`` starts a new video (``step`` on a frame of another size does
  it too). Device memory and time per frame do not grow with the video.

  A subclass supplies the device side: :meth:`_initial_state` (the memory
  and the 'no previous frame' record of a video's first frame, for a padded
  size) and :meth:`_run` (one frame: memory, previous frame, image, resized
  size, scale -> memory, the frame's keys/values, detections; see
  :func:`iai_jax.inference.frame_step`).
  """

  def __init__(self, config, category_ids=None):
    tracking.make_tracker(config)  # an unknown infer.tracker fails here
    self.config = config
    self.category_ids = category_ids
    self._masks = jax.jit(original_masks,
                          static_argnames=('resized', 'original', 'thr'))
    self._size = None
    self.frames = 0

  # the device side ------------------------------------------------------
  def _initial_state(self, padded):
    """(memory, previous-frame record) before a video's first frame."""
    raise NotImplementedError

  def _run(self, memory, prev, image, image_size, scale):
    """One frame on the device -> (memory, cache, detections)."""
    raise NotImplementedError

  # the host side --------------------------------------------------------
  def reset(self):
    self._size = None
    self.frames = 0

  def _start(self, height, width):
    m, e = self.config.model, self.config.infer
    resized, padded = inference_size(self.config, height, width)
    # first, so a size the device side cannot serve changes nothing
    self._memory, self._prev = self._initial_state(padded)
    self._size = (height, width)
    self._resized, self._padded = resized, padded
    self._scale = np.asarray([resized[1] / width, resized[0] / height] * 2,
                             np.float32)
    self._tracker = tracking.make_tracker(self.config)
    self._video = tracking.VideoAccumulator(
        m.num_classes, m.max_obj_num, e.max_per_img,
        score_thr=e.video_score_thr)
    self.frames = 0

  def step(self, frame: np.ndarray) -> list[dict[str, Any]]:
    frame = check_frame(frame)
    if self._size is None or frame.shape[:2] != self._size:
      self._start(*frame.shape[:2])
    image = prepare_frame(frame, self._resized, self._padded)
    memory, cache, dets = self._run(
        self._memory, self._prev, image,
        np.asarray(self._resized, np.int32), self._scale)
    host = jax.device_get({k: dets[k] for k in HOST_FIELDS})
    # for inspection (parity checks, tests): this frame's detections on the
    # host, and all of them (mask probabilities too) on the device
    self.last_detections, self.last_device = host, dets
    valid = host['valid']
    ids = self._tracker.assign(host['id_prob'], dets['masks'], valid)
    new = bool(self._tracker.new_instance)
    self._memory = memory
    self._prev = {'cache': cache, 'masks': dets['masks'],
                  'ids': jnp.asarray(ids, jnp.int32),
                  'new': jnp.asarray(new), 'valid': jnp.asarray(True)}
    full = np.asarray(self._masks(dets['prob'], jnp.asarray(valid),
                                  resized=tuple(self._resized),
                                  original=tuple(self._size),
                                  thr=self.config.infer.mask_thr))
    class_scores = host['cls_prob'] * host['ctr'][:, None]
    self._video.add_frame(ids, class_scores, full,
                          self._tracker.num_issued)
    instances = []
    for d in np.flatnonzero(ids >= 0):
      label = int(np.argmax(class_scores[d]))
      inst = {'id': int(ids[d]), 'label': label,
              'score': float(class_scores[d, label]),
              'box': host['box'][d].tolist(), 'mask': full[d]}
      if self.category_ids is not None:
        inst['category_id'] = int(self.category_ids[label])
      instances.append(inst)
    self.frames += 1
    return instances

  def finish(self):
    """The video's tracks; the segmenter is ready for a new video."""
    if self._size is None:
      return []
    tracks = self._video.finish()
    self.reset()
    return tracks
