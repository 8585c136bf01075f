"""Online inference: one jitted call per frame, host-side IDs, video results.

A frame of a video, as the authors' ``simple_test`` runs it:

1. the frame is resized keeping its ratio (shorter side to ``input.size[0]``,
   longer side at most ``input.size[1]``; OpenCV bilinear), normalised and
   zero padded to a multiple of 32 (:mod:`iai_jax.preprocess`): every frame
   of a video has the same padded shape, and one compiled program serves
   every video of that shape;
2. :func:`frame_step` on the device: the *previous* frame's memory write
   (its ID mask, built here from its kept detections' pixels and the IDs the
   host gave them), then backbone, association with the memory, FPN and
   heads (:func:`iai_jax.models.rollout.online_frame`), then the candidates,
   NMS, mask probabilities and overlap removal of :mod:`iai_jax.postprocess`;
3. on the host the tracker gives the kept detections IDs
   (:class:`iai_jax.tracking.IdTracker`: Hungarian with "new" columns; or,
   with ``infer.tracker='mask_iou'``, the tracking-by-detection baseline
   :class:`iai_jax.tracking.MaskIouTracker`);
4. the output masks at the original frame size (a second jitted call, one
   compilation per video size) and the video's tracks
   (:class:`iai_jax.tracking.VideoAccumulator`).

Static shapes throughout and a memory with a fixed number of slots, so frame
10,000 costs what frame 10 costs. :class:`OnlineSegmenter` wraps it::

  seg = OnlineSegmenter(config, variables)
  for frame in frames:            # (H, W, 3) uint8 RGB
    instances = seg.step(frame)   # [{'id', 'label', 'score', 'box', 'mask'}]
  tracks = seg.finish()           # the video's (ID, class) predictions
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from iai_jax import postprocess, preprocess
from iai_jax.models import backbones, locations, rollout
from iai_jax.models import iai as iai_model


def frame_step(variables, memory, prev, image, image_size, scale, *, model,
               config):
  """One frame of the online loop (see the module docstring).

  Args:
    variables: the model's {'params', 'batch_stats'}.
    memory: the :class:`Memory` (batch 1) before the previous frame's write.
    prev: {'cache': the previous call's keys/values, 'masks': (D, H, W) its
      kept detections' pixels, 'ids': (D,) int32 their IDs (-1 none), 'new':
      () bool a new ID was issued, 'valid': () bool there is a previous frame
      of this video}.
    image: (H, W, 3) uint8, the frame resized and padded.
    image_size: (2,) int32 resized, unpadded (h, w).
    scale: (4,) float32 resized / original size (w, h, w, h).
  Returns:
    (memory, cache, detections): detections has 'found' (D,) (kept by
    NMS), 'valid' (D,) (kept after the overlap rule), 'score' (D,) ranking
    score, 'cls_prob' (D, P),
    'ctr' (D,), 'id_prob' (D, N), 'box' (D, 4) in original pixels, 'masks'
    (D, H, W) bool the pixels each kept detection holds in the padded frame,
    'prob' (D, H, W) its mask probabilities, and 'first' ().
  """
  e = config.infer
  n = config.model.max_obj_num
  pending = {'cache': prev['cache'],
             'id_mask': postprocess.id_mask(prev['masks'], prev['ids'], n)[None],
             'new': prev['new'][None], 'valid': prev['valid']}
  x = preprocess.normalize(image[None], image_size[None], config.input)
  memory, out, cache = rollout.online_frame(
      rollout.Applied(model, variables), memory, x, pending)
  first = memory.frame[0] == 0

  c = postprocess.select_candidates(out, image_size, config, first)
  box = c['box'] / scale  # original-frame pixels
  keep = postprocess.greedy_nms(box, c['rank'], c['valid'], e.nms_iou)
  score = jnp.where(keep, c['rank'], -jnp.inf)
  num = min(e.max_per_img, score.shape[0])
  top_score, top = jax.lax.top_k(score, num)
  found = jnp.isfinite(top_score)
  feat_stride = image.shape[0] // out['mask_feats'].shape[1]
  prob = postprocess.mask_probabilities(
      out['mask_feats'][0], c['ctrl'][top], c['loc'][top], c['stride'][top],
      feat_stride)
  masks, kept = postprocess.remove_overlaps(prob > e.mask_thr, found,
                                            e.overlap_keep)
  dets = {'found': found, 'valid': kept,
          'score': jnp.where(found, top_score, 0.0),
          'cls_prob': c['cls'][top], 'ctr': c['ctr'][top],
          'id_prob': c['id'][top], 'box': box[top], 'masks': masks,
          'prob': prob, 'first': first}
  return memory, cache, dets


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


def _empty_prev(model, variables, padded, config):
  """A 'no previous frame' record with the right shapes (for the first call)."""
  d = min(config.infer.max_per_img,
          sum(min(config.infer.candidates_per_level, h * w)
              for h, w in locations.level_shapes(padded)))
  c5 = (1, padded[0] // 32, padded[1] // 32,
        backbones.get(config.model).channels['c5'])
  pending = rollout.no_pending(model, variables, config.model, c5, padded)
  return {'cache': pending['cache'], 'masks': jnp.zeros((d, *padded), bool),
          'ids': -jnp.ones((d,), jnp.int32), 'new': jnp.zeros((), bool),
          'valid': jnp.zeros((), bool)}


class OnlineSegmenter:
  """Streaming video instance segmentation, one frame at a time.

  ``step(frame)`` returns this frame's instances, each a dict with 'id'
  (stable through the video), 'label' (0-based class), 'category_id' (the
  dataset's id when known), 'score', 'box' (x1, y1, x2, y2 in original
  pixels) and 'mask' ((h0, w0) bool). ``finish()`` returns the video's
  predictions (see :meth:`iai_jax.tracking.VideoAccumulator.finish`) and
  ``reset()`` starts a new video (``step`` on a frame of another size does
  it too). A frame that is not an (H, W, 3) uint8 array is a ValueError
  raised before anything changes, so the video goes on with the next good
  frame. Device memory and time per frame do not grow with the video.
  """

  def __init__(self, config, variables, category_ids=None):
    from iai_jax import tracking
    tracking.make_tracker(config)  # an unknown infer.tracker fails here
    self.config = config
    self.model = iai_model.build_model(config.model)
    self.variables = variables
    self.category_ids = category_ids
    self._tracking = tracking
    self._step = jax.jit(functools.partial(frame_step, model=self.model,
                                           config=config))
    self._masks = jax.jit(postprocess.original_masks,
                          static_argnames=('resized', 'original', 'thr'))
    self._size = None
    self.frames = 0

  def compilations(self) -> int:
    """Programs compiled for the frame step so far (one per padded size)."""
    return self._step._cache_size()

  def reset(self):
    self._size = None
    self.frames = 0

  def _start(self, height, width):
    m, e = self.config.model, self.config.infer
    self._size = (height, width)
    self._resized, self._padded = inference_size(self.config, height, width)
    self._scale = np.asarray([self._resized[1] / width,
                              self._resized[0] / height] * 2, np.float32)
    self._memory = rollout.empty_memory(m, 1, self._padded)
    self._prev = _empty_prev(self.model, self.variables, self._padded,
                             self.config)
    self._tracker = self._tracking.make_tracker(self.config)
    self._video = self._tracking.VideoAccumulator(
        m.num_classes, m.max_obj_num, e.max_per_img,
        score_thr=e.video_score_thr)
    self.frames = 0

  def step(self, frame: np.ndarray) -> list[dict[str, Any]]:
    frame = check_frame(frame)
    if self._size is None or frame.shape[:2] != self._size:
      self._start(*frame.shape[:2])
    image = prepare_frame(frame, self._resized, self._padded)
    memory, cache, dets = self._step(
        self.variables, self._memory, self._prev, image,
        np.asarray(self._resized, np.int32), self._scale)
    host = jax.device_get({k: dets[k] for k in
                           ('found', 'valid', 'score', 'cls_prob', 'ctr',
                            'id_prob', 'box')})
    # for inspection (parity checks, tests): this frame's detections on the
    # host, and all of them (mask probabilities too) on the device
    self.last_detections, self.last_device = host, dets
    valid = host['valid']
    ids = self._tracker.assign(host['id_prob'], dets['masks'], valid)
    new = bool(self._tracker.new_instance)
    self._memory = memory
    self._prev = {'cache': cache, 'masks': dets['masks'],
                  'ids': jnp.asarray(ids), 'new': jnp.asarray(new),
                  'valid': jnp.asarray(True)}
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
