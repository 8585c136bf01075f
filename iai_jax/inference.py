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

Steps 1, 3 and 4 are :class:`iai_jax.online.HostLoop`, which a served
artifact (:mod:`iai_jax.serving`) shares; step 2 is :func:`frame_step`.

Static shapes throughout and a memory with a fixed number of slots, so frame
10,000 costs what frame 10 costs. :class:`OnlineSegmenter` wraps it::

  seg = OnlineSegmenter(config, variables)
  for frame in frames:            # (H, W, 3) uint8 RGB
    instances = seg.step(frame)   # [{'id', 'label', 'score', 'box', 'mask'}]
  tracks = seg.finish()           # the video's (ID, class) predictions
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from iai_jax import online, postprocess, preprocess
from iai_jax.models import backbones, locations, rollout
from iai_jax.models import iai as iai_model

# the host side of the loop (:mod:`iai_jax.online`), under their old names
check_frame = online.check_frame
inference_size = online.inference_size
prepare_frame = online.prepare_frame


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
  n = config.model.max_obj_num
  pending = {'cache': prev['cache'],
             'id_mask': postprocess.id_mask(prev['masks'], prev['ids'], n)[None],
             'new': prev['new'][None], 'valid': prev['valid']}
  x = preprocess.normalize(image[None], image_size[None], config.input)
  memory, out, cache = rollout.online_frame(
      rollout.Applied(model, variables), memory, x, pending)
  first = memory.frame[0] == 0
  dets = detections(out, image_size, scale, first, image.shape[:2],
                    config=config)
  return memory, cache, dets


def detections(out, image_size, scale, first, padded, *, config):
  """The head outputs of one frame (batch 1) -> its detections (see
  :func:`frame_step`): candidates, NMS, top-k, mask probabilities and the
  overlap rule. ``padded``: (H, W) of the padded frame; ``first``: () bool
  the video's first frame."""
  e = config.infer
  c = postprocess.select_candidates(out, image_size, config, first)
  box = c['box'] / scale  # original-frame pixels
  keep = postprocess.greedy_nms(box, c['rank'], c['valid'], e.nms_iou)
  score = jnp.where(keep, c['rank'], -jnp.inf)
  num = min(e.max_per_img, score.shape[0])
  top_score, top = jax.lax.top_k(score, num)
  found = jnp.isfinite(top_score)
  feat_stride = padded[0] // out['mask_feats'].shape[1]
  prob = postprocess.mask_probabilities(
      out['mask_feats'][0], c['ctrl'][top], c['loc'][top], c['stride'][top],
      feat_stride)
  masks, kept = postprocess.remove_overlaps(prob > e.mask_thr, found,
                                            e.overlap_keep)
  return {'found': found, 'valid': kept,
          'score': jnp.where(found, top_score, 0.0),
          'cls_prob': c['cls'][top], 'ctr': c['ctr'][top],
          'id_prob': c['id'][top], 'box': box[top], 'masks': masks,
          'prob': prob, 'first': first}


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


class OnlineSegmenter(online.HostLoop):
  """Streaming video instance segmentation with the model in this process.

  The API (``step``, ``finish``, ``reset``) and the host side are
  :class:`iai_jax.online.HostLoop`'s; the device side is :func:`frame_step`,
  jitted (one compilation per padded size). A frame that is not an
  (H, W, 3) uint8 array is a ValueError raised before anything changes, so
  the video goes on with the next good frame.
  """

  def __init__(self, config, variables, category_ids=None):
    super().__init__(config, category_ids)
    self.model = iai_model.build_model(config.model)
    self.variables = variables
    self._step = jax.jit(functools.partial(frame_step, model=self.model,
                                           config=config))

  def compilations(self) -> int:
    """Programs compiled for the frame step so far (one per padded size)."""
    return self._step._cache_size()

  def _initial_state(self, padded):
    memory = rollout.empty_memory(self.config.model, 1, padded)
    return memory, _empty_prev(self.model, self.variables, padded, self.config)

  def _run(self, memory, prev, image, image_size, scale):
    return self._step(self.variables, memory, prev, image, image_size, scale)
