"""Online inference: one jitted call per frame, host-side IDs, video results.

The per-frame call (:func:`frame_step`) does, for one padded frame:

1. write the *previous* frame into the memory (its keys/values, cached by
   the previous call, and its ID mask, built here from the previous
   detections' masks and the IDs the host assigned them) - so a frame costs
   exactly one device call;
2. backbone, association with the memory, FPN and heads;
3. candidates: per level the top ``infer.candidates_per_level`` locations by
   max class score x centerness, kept if max class score and max ID score
   exceed their thresholds and the location lies inside the image;
4. the ranking score ((cls + 0.5 id) x ctr on a video's first frame,
   (0.5 cls + id) x ctr afterwards), class-agnostic greedy NMS, the top
   ``infer.max_per_img``;
5. their masks from the dynamic mask head (aligned-bilinear x2 then x4, as
   in training's stride-4 loss; sigmoid, 0.5), and the overlap removal: in score order a detection keeps only the
   pixels no earlier detection kept, and is dropped when less than
   ``infer.overlap_keep`` of its area survives.

Everything has a static shape (padded frame bucket, fixed candidate and
detection counts), so a video - and every other video of the same bucket -
runs on one compiled program, and the memory has a fixed number of slots, so
frame 10,000 costs what frame 10 costs.

The host then assigns IDs (:class:`iai_jax.tracking.IdTracker`, Hungarian
with "new" columns; or, with ``infer.tracker='mask_iou'``, the
tracking-by-detection baseline :class:`iai_jax.tracking.MaskIouTracker`,
which matches the masks to the previous frame's instead of using the ID
head's probabilities - the detections, steps 1-5, are the same for both),
resizes the masks to the original frame size and accumulates the video's
tracks (:class:`iai_jax.tracking.VideoAccumulator`).
:class:`OnlineSegmenter` wraps all of it::

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
from PIL import Image

from iai_jax import config_lib
from iai_jax.models import iai as iai_model
from iai_jax.models import backbones, locations, rollout
from iai_jax.models.condinst import dynamic_mask_head, mask_logits_at_input


# ----------------------------------------------------------------- pieces
def box_iou_matrix(boxes: jax.Array) -> jax.Array:
  """(K, 4) x1, y1, x2, y2 -> (K, K) IoU."""
  area = jnp.maximum(boxes[:, 2] - boxes[:, 0], 0) * jnp.maximum(
      boxes[:, 3] - boxes[:, 1], 0)
  lt = jnp.maximum(boxes[:, None, :2], boxes[None, :, :2])
  rb = jnp.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
  wh = jnp.maximum(rb - lt, 0)
  inter = wh[..., 0] * wh[..., 1]
  union = area[:, None] + area[None, :] - inter
  return jnp.where(union > 0, inter / jnp.maximum(union, 1e-12), 0.0)


def greedy_nms(boxes, scores, valid, iou_thr: float):
  """Class-agnostic greedy NMS with static shapes.

  Returns a (K,) bool mask of the kept boxes: walking the valid boxes by
  descending score (ties: lower index first), a box is kept unless a kept box
  overlaps it with IoU > ``iou_thr``.
  """
  k = scores.shape[0]
  order = jnp.argsort(jnp.where(valid, -scores, jnp.inf), stable=True)
  b = boxes[order]
  v = valid[order]
  iou = box_iou_matrix(b)
  idx = jnp.arange(k)

  def body(i, keep):
    suppressed = jnp.any(keep & (iou[i] > iou_thr) & (idx < i))
    return keep.at[i].set(v[i] & ~suppressed)

  keep_sorted = jax.lax.fori_loop(0, k, body, jnp.zeros((k,), bool))
  return jnp.zeros((k,), bool).at[order].set(keep_sorted)


def remove_overlaps(masks, valid, min_keep: float):
  """Masks (D, H, W) bool in score order -> disjoint masks and kept flags.

  Each detection keeps the pixels that no earlier *kept* detection holds; it
  is dropped (and claims nothing) when it had no pixels or less than
  ``min_keep`` of its pixels survive.
  """
  def body(claimed, xs):
    mask, ok = xs
    area = mask.sum()
    left = mask & ~claimed
    keep = ok & (area > 0) & (left.sum() >= min_keep * area)
    left = left & keep
    return claimed | left, (left, keep)

  claimed0 = jnp.zeros(masks.shape[1:], bool)
  _, (out, keep) = jax.lax.scan(body, claimed0, (masks, valid))
  return out, keep


def id_map_from_detections(masks, ids, num_ids: int):
  """Disjoint masks (D, H, W) and IDs (D,) (-1: none) -> (H, W) int32 map.

  The value is the ID of the detection covering the pixel, ``num_ids`` (the
  background channel of the ID mask) elsewhere.
  """
  has = masks & (ids >= 0)[:, None, None]
  label = jnp.einsum('dhw,d->hw', has.astype(jnp.int32), jnp.maximum(ids, 0))
  return jnp.where(has.any(axis=0), label, num_ids).astype(jnp.int32)


def select_candidates(out, image_size, config, first_frame):
  """Per-level top-k candidates of one frame, ranked; see the module doc."""
  e = config.infer
  strides = locations.STRIDES
  fields = {k: [] for k in ('cls', 'id', 'reg', 'ctr', 'ctrl', 'loc', 'stride')}
  for level, s in enumerate(strides):
    cls = jax.nn.sigmoid(out['cls'][level][0].astype(jnp.float32))
    h, w, _ = cls.shape
    cls = cls.reshape(h * w, -1)
    ctr = jax.nn.sigmoid(out['ctr'][level][0].astype(jnp.float32)).reshape(-1)
    k = min(e.candidates_per_level, h * w)
    _, top = jax.lax.top_k(cls.max(axis=1) * ctr, k)
    fields['cls'].append(cls[top])
    fields['ctr'].append(ctr[top])
    fields['id'].append(jax.nn.sigmoid(
        out['id'][level][0].astype(jnp.float32)).reshape(h * w, -1)[top])
    fields['reg'].append(out['reg'][level][0].astype(jnp.float32).reshape(
        h * w, 4)[top])
    fields['ctrl'].append(out['ctrl'][level][0].reshape(h * w, -1)[top])
    loc = locations.grid_locations(h, w, s)
    fields['loc'].append(jnp.asarray(loc, jnp.float32)[top])
    fields['stride'].append(jnp.full((k,), s, jnp.float32))
  c = {k: jnp.concatenate(v, axis=0) for k, v in fields.items()}
  cls_max, id_max = c['cls'].max(axis=1), c['id'].max(axis=1)
  x, y = c['loc'][:, 0], c['loc'][:, 1]
  inside = (x < image_size[1]) & (y < image_size[0])
  c['valid'] = (cls_max > e.score_thr) & (id_max > e.id_thr) & inside
  c['rank'] = jnp.where(first_frame, c['cls'].max(1) + 0.5 * id_max,
                        0.5 * cls_max + id_max) * c['ctr']
  l, t, r, b = (c['reg'][:, i] for i in range(4))
  box = jnp.stack([x - l, y - t, x + r, y + b], axis=1)
  hi = jnp.asarray([image_size[1], image_size[0]] * 2, jnp.float32)
  c['box'] = jnp.clip(box, 0.0, hi)
  return c


def frame_step(variables, memory, prev, image, image_size, *, model, config):
  """One frame of the online loop (see the module docstring).

  Args:
    variables: the model's {'params', 'batch_stats'}.
    memory: the :class:`Memory` (batch 1) before the previous frame's write.
    prev: {'cache': the previous call's keys/values, 'masks': (D, H, W) its
      kept masks, 'ids': (D,) int32 their IDs (-1 none), 'new': () bool a new
      ID was issued, 'valid': () bool there is a previous frame of this video}.
    image: (H, W, 3) uint8, the frame resized and padded to the bucket.
    image_size: (2,) int32 resized, unpadded (h, w).
  Returns:
    (memory, cache, detections): detections has 'valid' (D,), 'score' (D,)
    ranking score, 'cls_prob' (D, P), 'ctr' (D,), 'id_prob' (D, N), 'box'
    (D, 4) in input pixels, 'mask' (D, H, W) bool (disjoint) and 'first' ().
  """
  e = config.infer
  n = config.model.max_obj_num
  id_map = id_map_from_detections(prev['masks'], prev['ids'], n)
  pending = {'cache': prev['cache'],
             'id_mask': jax.nn.one_hot(id_map, n + 1, dtype=jnp.float32)[None],
             'new': prev['new'][None], 'valid': prev['valid']}
  x = iai_model.normalize_images(image[None], config.input)
  memory, out, cache = rollout.online_frame(
      rollout.Applied(model, variables), memory, x, pending)
  first = memory.frame[0] == 0

  c = select_candidates(out, image_size, config, first)
  keep = greedy_nms(c['box'], c['rank'], c['valid'], e.nms_iou)
  score = jnp.where(keep, c['rank'], -jnp.inf)
  num = min(e.max_per_img, score.shape[0])
  top_score, top = jax.lax.top_k(score, num)
  valid = jnp.isfinite(top_score)
  feat_stride = image.shape[0] // out['mask_feats'].shape[1]
  logits = dynamic_mask_head(out['mask_feats'][0], c['ctrl'][top],
                             c['loc'][top], c['stride'][top], feat_stride)
  logits = mask_logits_at_input(logits, feat_stride)
  h, w = image.shape[:2]
  inside = ((jnp.arange(h) < image_size[0])[:, None]
            & (jnp.arange(w) < image_size[1])[None, :])
  masks = (jax.nn.sigmoid(logits) > e.mask_thr) & inside[None]
  masks, valid = remove_overlaps(masks, valid, e.overlap_keep)
  dets = {'valid': valid, 'score': jnp.where(valid, top_score, 0.0),
          'cls_prob': c['cls'][top], 'ctr': c['ctr'][top],
          'id_prob': c['id'][top], 'box': c['box'][top], 'mask': masks,
          'first': first}
  return memory, cache, dets


# ----------------------------------------------------------------- frames
def inference_size(config, height: int, width: int) -> tuple[tuple[int, int],
                                                             tuple[int, int]]:
  """((resized h, w), (bucket H, W)) of a frame of the given original size.

  Frames are resized keeping the ratio (shorter side to ``input.size[0]``,
  longer side at most ``input.size[1]``) and padded to a multiple of
  ``input.size_divisor``; all videos with the same orientation and ratio
  class share the bucket ``padded_size(input.size)`` (landscape) or its
  transpose (portrait).
  """
  short, long = config.input.size
  scale = min(short / min(height, width), long / max(height, width))
  nh = max(1, int(round(height * scale)))
  nw = max(1, int(round(width * scale)))
  bucket = config_lib.padded_size(short, long, config.input.size_divisor)
  if height > width:
    bucket = bucket[::-1]
  return (nh, nw), tuple(bucket)


def prepare_frame(frame: np.ndarray, resized, bucket) -> np.ndarray:
  """(h0, w0, 3) uint8 RGB -> (H, W, 3) uint8, resized and zero padded."""
  frame = np.asarray(frame)
  if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
    raise ValueError(f'a frame must be an (H, W, 3) uint8 RGB array, got '
                     f'{frame.shape} {frame.dtype}')
  img = np.asarray(Image.fromarray(frame).resize(
      (resized[1], resized[0]), Image.BILINEAR))
  out = np.zeros((*bucket, 3), np.uint8)
  out[:resized[0], :resized[1]] = img
  return out


def resize_mask(mask: np.ndarray, resized, original) -> np.ndarray:
  """Input-resolution bool mask -> the original frame size (nearest)."""
  crop = mask[:resized[0], :resized[1]].astype(np.uint8)
  img = Image.fromarray(crop).resize((original[1], original[0]), Image.NEAREST)
  return np.asarray(img).astype(bool)


def _empty_prev(model, variables, bucket, config):
  """A 'no previous frame' record with the right shapes (for the first call)."""
  d = min(config.infer.max_per_img,
          sum(min(config.infer.candidates_per_level, h * w)
              for h, w in locations.level_shapes(bucket)))
  c5 = (1, bucket[0] // 32, bucket[1] // 32,
        backbones.get(config.model).channels['c5'])
  pending = rollout.no_pending(model, variables, config.model, c5, bucket)
  return {'cache': pending['cache'], 'masks': jnp.zeros((d, *bucket), bool),
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
  it too). Device memory and time per frame do not grow with the video.
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
    self._size = None
    self.frames = 0

  def compilations(self) -> int:
    """Programs compiled for the frame step so far (one per bucket)."""
    return self._step._cache_size()

  def reset(self):
    self._size = None
    self.frames = 0

  def _start(self, height, width):
    m, e = self.config.model, self.config.infer
    self._size = (height, width)
    self._resized, self._bucket = inference_size(self.config, height, width)
    self._memory = rollout.empty_memory(m, 1, self._bucket)
    self._prev = _empty_prev(self.model, self.variables, self._bucket,
                             self.config)
    self._tracker = self._tracking.make_tracker(self.config)
    self._video = self._tracking.VideoAccumulator(
        m.num_classes, e.max_per_img, score_thr=e.video_score_thr)
    self.frames = 0

  def step(self, frame: np.ndarray) -> list[dict[str, Any]]:
    frame = np.asarray(frame)
    if self._size is None or frame.shape[:2] != self._size:
      self._start(*frame.shape[:2])
    image = prepare_frame(frame, self._resized, self._bucket)
    memory, cache, dets = self._step(
        self.variables, self._memory, self._prev, image,
        np.asarray(self._resized, np.int32))
    host = jax.device_get({k: v for k, v in dets.items() if k != 'mask'})
    valid = host['valid']
    masks = np.asarray(dets['mask'])
    ids = self._tracker.assign(host['id_prob'], masks, valid)
    ids = np.where(valid, ids, -1).astype(np.int32)
    new = bool(self._tracker.new_instance)  # as the authors: dropped ones too
    self._memory = memory
    self._prev = {'cache': cache, 'masks': dets['mask'],
                  'ids': jnp.asarray(ids), 'new': jnp.asarray(new),
                  'valid': jnp.asarray(True)}
    kept = np.flatnonzero(ids >= 0)
    full = np.zeros((len(ids), *self._size), bool)
    for d in kept:
      full[d] = resize_mask(masks[d], self._resized, self._size)
    class_scores = host['cls_prob'] * host['ctr'][:, None]
    self._video.add_frame(ids, class_scores, full)
    scale = np.array([self._size[1] / self._resized[1],
                      self._size[0] / self._resized[0]] * 2, np.float32)
    instances = []
    for d in kept:
      label = int(np.argmax(class_scores[d]))
      inst = {'id': int(ids[d]), 'label': label,
              'score': float(class_scores[d, label]),
              'box': (host['box'][d] * scale).tolist(), 'mask': full[d]}
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
