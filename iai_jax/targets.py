"""FCOS / CondInst training targets on padded, static shapes.

Ground truth of one frame (``M`` = padded number of instances, ``H, W`` =
padded input size):

  boxes   (M, 4) float  x1, y1, x2, y2 in input pixels (x2, y2 exclusive)
  labels  (M,) int      class index
  ids     (M,) int      ID target in [0, N-1] (N-1 = "new")
  centers (M, 2) float  (x, y) centre of mass of each instance's mask
  mask4   (M, H/4, W/4) each instance's own mask sampled at stride 4
  valid   (M,) bool     False for padding entries
  ignore  (H, W) bool   dropped-instance regions

The locations of all FPN levels are concatenated (P3..P7, each row-major), as
:mod:`iai_jax.models.locations` lays them out.  A location is a candidate for instance m
when

* it lies strictly inside the centre-sampling region: the square of
  half-size ``radius * stride`` around the centre of mass of m's mask
  (pixel-index coordinates, as CondInst computes it; (0, 0) for an empty
  mask, as the authors' code gives), clipped to m's box;
* the largest of its regression distances (l, t, r, b) to m's box lies in
  the level's size range.  By default both ends are inclusive, as in the
  FCOS / AdelaiDet assigner (``lo <= max <= hi``);
  ``range_lower_inclusive=False`` gives ``lo < max <= hi``.

A location that is a candidate for several instances goes to the one with the
smallest box area (the lowest index on equal areas).  Everything is
``jax.numpy`` on fixed shapes, so it runs under ``jit`` and ``vmap``.
"""

from __future__ import annotations

import functools
import math
import jax
import jax.numpy as jnp
import numpy as np

from iai_jax.models.locations import STRIDES, location_table

SIZES_OF_INTEREST = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0),
                     (256.0, 512.0), (512.0, math.inf))
CENTER_RADIUS = 1.5
IGNORE_LABEL = 254  # ``iai_jax.data.pipeline.IGNORE`` in the id_map
_INF = 1e8


@functools.lru_cache(maxsize=32)
def size_ranges(shapes: tuple, sizes: tuple = SIZES_OF_INTEREST):
  """(L,) lower and upper regression-size bounds of every location."""
  if len(sizes) != len(shapes):
    raise ValueError(f'{len(shapes)} level shapes and {len(sizes)} size '
                     'ranges must agree')
  counts = [h * w for h, w in shapes]
  lo = np.concatenate([np.full((k,), a, np.float32)
                       for k, (a, _) in zip(counts, sizes)])
  hi = np.concatenate([np.full((k,), b, np.float32)
                       for k, (_, b) in zip(counts, sizes)])
  return lo, hi


def mask_centers(masks):
  """(M, H, W) masks -> (M, 2) (x, y) centres of mass.

  Pixel-index coordinates (pixel (i, j) counts at x=j, y=i); (0, 0) for an
  empty mask (the authors divide by max(area, 1e-6)).
  """
  m = masks.astype(jnp.float32)
  h, w = m.shape[-2:]
  area = jnp.maximum(m.sum(axis=(-2, -1)), 1e-6)
  cx = jnp.einsum('mhw,w->m', m, jnp.arange(w, dtype=jnp.float32))
  cy = jnp.einsum('mhw,h->m', m, jnp.arange(h, dtype=jnp.float32))
  return jnp.stack([cx / area, cy / area], axis=-1)


def centerness(reg):
  """sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) of (..., 4) l,t,r,b; 0 where
  a distance is not positive."""
  l, t, r, b = (reg[..., i] for i in range(4))
  ok = (jnp.minimum(l, r) > 0) & (jnp.minimum(t, b) > 0)
  lr = jnp.minimum(l, r) / jnp.where(ok, jnp.maximum(l, r), 1.0)
  tb = jnp.minimum(t, b) / jnp.where(ok, jnp.maximum(t, b), 1.0)
  return jnp.where(ok, jnp.sqrt(jnp.where(ok, lr * tb, 1.0)), 0.0)


def assign_locations(boxes, labels, ids, centers, valid, ignore, *,
                     shapes: tuple, strides: tuple = STRIDES,
                     sizes: tuple = SIZES_OF_INTEREST,
                     radius: float = CENTER_RADIUS,
                     range_lower_inclusive: bool = True):
  """FCOS assignment of one frame's instances to all levels' locations.

  Args:
    boxes, labels, ids, centers, valid, ignore: one frame's ground truth
      (see the module docstring).
    shapes: static ((h, w), ...) of the levels
      (:func:`iai_jax.models.locations.level_shapes`).
  Returns a dict over the L concatenated locations:
    cls_target (L,) int32: class, -1 for background;
    id_target (L,) int32: ID target, -1 for background;
    reg_target (L, 4) float32: l, t, r, b to the assigned box (0 elsewhere);
    ctr_target (L,) float32: centerness of reg_target (0 elsewhere);
    gt_index (L,) int32: assigned instance, -1 for background;
    ignore (L,) bool: not positive and inside an ignore region.
  """
  shapes = tuple(map(tuple, shapes))
  locs, stride, _ = location_table(shapes, tuple(strides))
  lo, hi = size_ranges(shapes, tuple(sizes))
  xs = jnp.asarray(locs[:, 0])[:, None]  # (L, 1)
  ys = jnp.asarray(locs[:, 1])[:, None]
  boxes = boxes.astype(jnp.float32)
  x1, y1, x2, y2 = (boxes[None, :, i] for i in range(4))  # (1, M)
  reg = jnp.stack([xs - x1, ys - y1, x2 - xs, y2 - ys], axis=-1)  # (L, M, 4)

  centers = centers.astype(jnp.float32)
  rad = jnp.asarray(stride)[:, None] * radius  # (L, 1)
  cx, cy = centers[None, :, 0], centers[None, :, 1]
  sx1 = jnp.maximum(cx - rad, x1)
  sy1 = jnp.maximum(cy - rad, y1)
  sx2 = jnp.minimum(cx + rad, x2)
  sy2 = jnp.minimum(cy + rad, y2)
  in_center = jnp.minimum(jnp.minimum(xs - sx1, ys - sy1),
                          jnp.minimum(sx2 - xs, sy2 - ys)) > 0  # (L, M)

  max_reg = reg.max(axis=-1)
  lo_ = jnp.asarray(lo)[:, None]
  hi_ = jnp.asarray(hi)[:, None]
  above = (max_reg >= lo_) if range_lower_inclusive else (max_reg > lo_)
  in_range = above & (max_reg <= hi_)

  cand = in_center & in_range & valid.astype(bool)[None, :]
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  cost = jnp.where(cand, area[None, :], _INF)
  gt = jnp.argmin(cost, axis=1).astype(jnp.int32)  # first minimum on ties
  pos = cand.any(axis=1)

  reg_t = jnp.take_along_axis(reg, gt[:, None, None], axis=1)[:, 0]
  reg_t = jnp.where(pos[:, None], reg_t, 0.0)
  ctr_t = jnp.where(pos, centerness(reg_t), 0.0)
  cls_t = jnp.where(pos, labels.astype(jnp.int32)[gt], -1)
  id_t = jnp.where(pos, ids.astype(jnp.int32)[gt], -1)

  hh, ww = ignore.shape
  iy = np.clip(locs[:, 1].astype(np.int64), 0, hh - 1)
  ix = np.clip(locs[:, 0].astype(np.int64), 0, ww - 1)
  ign = ignore.astype(bool)[iy, ix] & ~pos
  return {
      'cls_target': cls_t,
      'id_target': id_t,
      'reg_target': reg_t,
      'ctr_target': ctr_t,
      'gt_index': jnp.where(pos, gt, -1),
      'ignore': ign,
  }


def mask_targets(masks, stride: int = 4):
  """(M, H, W) -> (M, H/stride, W/stride) float32 samples at offset
  stride//2 (``masks[:, 2::4, 2::4]`` for stride 4)."""
  return masks[:, stride // 2::stride, stride // 2::stride].astype(jnp.float32)


def fcos_targets(gt: dict, *, shapes: tuple, strides: tuple = STRIDES,
                 sizes: tuple = SIZES_OF_INTEREST,
                 radius: float = CENTER_RADIUS,
                 range_lower_inclusive: bool = True) -> dict:
  """All targets of one frame: :func:`assign_locations`' dict plus
  'mask_target' (M, H/4, W/4) float32 (``gt['mask4']``).

  ``gt`` holds 'boxes', 'labels', 'ids', 'centers', 'mask4', 'valid',
  'ignore'.
  """
  out = assign_locations(gt['boxes'], gt['labels'], gt['ids'], gt['centers'],
                         gt['valid'], gt['ignore'], shapes=shapes,
                         strides=strides, sizes=sizes, radius=radius,
                         range_lower_inclusive=range_lower_inclusive)
  out['mask_target'] = gt['mask4'].astype(jnp.float32)
  return out


def batch_targets(gt: dict, *, shapes: tuple, **kwargs) -> dict:
  """:func:`fcos_targets` vmapped over a leading frame axis of every ``gt``
  entry (F, ...)."""
  fn = functools.partial(fcos_targets, shapes=shapes, **kwargs)
  return jax.vmap(fn)(gt)


# ----------------------------------------------------------------- clips
def id_mask_from_map(id_map, num_ids: int):
  """(B, H, W) uint8 id_map -> (B, H, W, N+1) one-hot ID mask.

  What the memory is written with in training (teacher forcing): clip
  instance k holds ID k (k <= N-2); every other pixel (background, ignore
  regions, padding) goes to the background channel N.
  """
  ids = id_map.astype(jnp.int32)
  ids = jnp.where(ids < num_ids - 1, ids, num_ids)
  return jax.nn.one_hot(ids, num_ids + 1, dtype=jnp.float32)


def clip_ground_truth(batch):
  """Per-frame ground-truth dicts (leading dim B*T, clip-major) from a batch
  of clips of :mod:`iai_jax.data.pipeline`."""
  b, t_len = batch['id_map'].shape[:2]
  m = batch['label'].shape[-1]
  fold = lambda x: x.reshape(b * t_len, *x.shape[2:])
  label = jnp.broadcast_to(batch['label'][:, None], (b, t_len, m))
  id_target = batch['id_target']
  valid = batch['present'].astype(bool) & (label >= 0) & (id_target >= 0)
  return {
      'boxes': fold(batch['box']).astype(jnp.float32),
      'labels': fold(jnp.maximum(label, 0)).astype(jnp.int32),
      'ids': fold(jnp.maximum(id_target, 0)).astype(jnp.int32),
      'centers': fold(batch['center']).astype(jnp.float32),
      'mask4': fold(batch['mask4']),
      'valid': fold(valid),
      'ignore': fold(batch['id_map']) == IGNORE_LABEL,
  }
