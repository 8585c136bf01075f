"""The online loop's post-processing on the device, as the authors' head does.

Static shapes throughout: a fixed number of candidates per level and of
detections per frame, ``valid`` flags for the real ones. In order:

1. :func:`select_candidates`: per level the top ``infer.candidates_per_level``
   locations by max class probability x centerness (all of a level with
   fewer); a candidate is valid when its max class probability and its max
   ID probability exceed ``infer.score_thr`` / ``infer.id_thr``. Locations in
   the padded area are kept; boxes are clipped to the resized frame.
   Ranking score: (cls + 0.5 id) x ctr on a video's first frame, (0.5 cls +
   id) x ctr afterwards.
2. :func:`greedy_nms`: class-agnostic greedy NMS (IoU > ``infer.nms_iou``
   suppresses) on the boxes in original-frame pixels, shifted by their
   largest coordinate + 1 as mmcv's ``batched_nms`` does; the top
   ``infer.max_per_img`` by score.
3. :func:`mask_probabilities`: dynamic mask head at the mask features'
   stride, logits aligned-bilinear to stride 4, sigmoid, probabilities
   aligned-bilinear x4 to the padded frame.
4. :func:`remove_overlaps`: in score order each detection takes the pixels
   (mask > 0.5 over the whole padded frame) no earlier detection took - a
   detection that is then dropped (no pixels, or less than
   ``infer.overlap_keep`` of them left) still takes them;
5. :func:`id_mask`: the frame's one-hot ID mask for the memory from the
   kept detections' pixels and the IDs the host gave them (padded frame;
   channel N = background);
6. :func:`original_masks`: the output masks: probabilities cropped to the
   resized frame, bilinearly resized (half-pixel centres, no antialiasing) to
   the original frame, > 0.5, each kept detection minus the pixels of the
   earlier kept ones. It runs after the host's tracker, in
   :mod:`iai_jax.online` (which a served model without the Flax code
   imports); here under its old name.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from iai_jax.models import locations
from iai_jax.online import original_masks, resize_bilinear  # noqa: F401
from iai_jax.models.condinst import dynamic_mask_head, mask_logits_at_stride4
from iai_jax.models.layers import aligned_bilinear


def select_candidates(out, image_size, config, first_frame):
  """Per-level top-k candidates of one frame (``out`` has batch 1)."""
  e = config.infer
  fields = {k: [] for k in ('cls', 'id', 'reg', 'ctr', 'ctrl', 'loc', 'stride')}
  for level, s in enumerate(locations.STRIDES):
    cls = jax.nn.sigmoid(out['cls'][level][0].astype(jnp.float32))
    h, w, _ = cls.shape
    cls = cls.reshape(h * w, -1)
    ctr = jax.nn.sigmoid(out['ctr'][level][0].astype(jnp.float32)).reshape(-1)
    k = min(e.candidates_per_level, h * w)
    _, top = jax.lax.top_k((cls * ctr[:, None]).max(axis=1), k)
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
  c['valid'] = (cls_max > e.score_thr) & (id_max > e.id_thr)
  c['rank'] = jnp.where(first_frame, cls_max + 0.5 * id_max,
                        0.5 * cls_max + id_max) * c['ctr']
  x, y = c['loc'][:, 0], c['loc'][:, 1]
  l, t, r, b = (c['reg'][:, i] for i in range(4))
  hi_x = image_size[1].astype(jnp.float32)
  hi_y = image_size[0].astype(jnp.float32)
  c['box'] = jnp.stack([jnp.clip(x - l, 0.0, hi_x), jnp.clip(y - t, 0.0, hi_y),
                        jnp.clip(x + r, 0.0, hi_x), jnp.clip(y + b, 0.0, hi_y)],
                       axis=1)
  return c


def greedy_nms(boxes, scores, valid, iou_thr: float):
  """Class-agnostic greedy NMS with static shapes -> (K,) bool kept.

  Walking the valid boxes by descending score (ties: lower index first), a
  box is kept unless a kept box overlaps it with IoU > ``iou_thr``. As mmcv's
  ``batched_nms`` (all boxes in one class), the boxes are first shifted by
  their largest coordinate + 1, which changes float32 rounding.
  """
  k = scores.shape[0]
  big = jnp.max(jnp.where(valid[:, None], boxes, -jnp.inf))
  boxes = boxes + jnp.where(jnp.isfinite(big), big, 0.0) + 1.0
  order = jnp.argsort(jnp.where(valid, -scores, jnp.inf), stable=True)
  b = boxes[order]
  v = valid[order]
  area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  iw = jnp.maximum(jnp.minimum(b[:, None, 2], b[None, :, 2])
                   - jnp.maximum(b[:, None, 0], b[None, :, 0]), 0.0)
  ih = jnp.maximum(jnp.minimum(b[:, None, 3], b[None, :, 3])
                   - jnp.maximum(b[:, None, 1], b[None, :, 1]), 0.0)
  inter = iw * ih
  iou = inter / (area[:, None] + area[None, :] - inter)  # NaN -> no suppress
  idx = jnp.arange(k)

  def body(i, keep):
    suppressed = jnp.any(keep & (iou[i] > iou_thr) & (idx < i))
    return keep.at[i].set(v[i] & ~suppressed)

  keep_sorted = jax.lax.fori_loop(0, k, body, jnp.zeros((k,), bool))
  return jnp.zeros((k,), bool).at[order].set(keep_sorted)


def mask_probabilities(mask_feats, ctrl, loc, stride, feat_stride: int):
  """(D, H, W) mask probabilities at the padded frame's resolution."""
  logits = dynamic_mask_head(mask_feats, ctrl, loc, stride, feat_stride)
  prob4 = jax.nn.sigmoid(mask_logits_at_stride4(logits, feat_stride))
  return aligned_bilinear(prob4[..., None], 4)[..., 0]


def remove_overlaps(masks, valid, min_keep: float):
  """(D, H, W) bool masks in score order -> (claimed pixels, kept flags).

  Each valid detection claims the pixels that no earlier valid detection
  claimed - also when it is then dropped (it had no pixels, or less than
  ``min_keep`` of them were left); a dropped detection's pixels are taken
  from the later ones but written nowhere.
  """
  def body(free, xs):
    mask, ok = xs
    mask = mask & ok
    new = free & mask
    area = mask.sum()
    share = new.sum().astype(jnp.float32) / jnp.maximum(area, 1).astype(
        jnp.float32)
    keep = ok & (area > 0) & (share >= jnp.float32(min_keep))
    return free & ~new, (new & keep, keep)

  free0 = jnp.ones(masks.shape[1:], bool)
  _, (out, keep) = jax.lax.scan(body, free0, (masks, valid))
  return out, keep


def id_mask(masks, ids, num_ids: int):
  """Kept detections' pixels (D, H, W) and IDs (D,) (-1: none) -> the
  (H, W, N+1) float32 one-hot ID mask.

  As the authors' head writes it: channel d is the pixels of the last
  detection with ID d (several detections share ID N-2 once the video's
  IDs are used up), channel N is 1 where no detection with an ID is.
  """
  d = masks.shape[0]
  with_id = masks & (ids >= 0)[:, None, None]
  owner = jnp.where(ids[:, None] == jnp.arange(num_ids)[None, :],
                    jnp.arange(d)[:, None], -1).max(axis=0)  # (N,)
  channels = jnp.where((owner >= 0)[:, None, None],
                       with_id[jnp.maximum(owner, 0)], False)  # (N, H, W)
  background = ~with_id.any(axis=0)
  out = jnp.concatenate([channels, background[None]], axis=0)
  return jnp.moveaxis(out, 0, -1).astype(jnp.float32)
