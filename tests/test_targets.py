"""FCOS target assignment against hand counts and a loop-by-loop numpy
reference, on a 64x96 image."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from iai_jax import targets as T
from iai_jax.models import locations

H, W = 64, 96
SHAPES = ((8, 12), (4, 6), (2, 3), (1, 2), (1, 1))
RANGES = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, math.inf))


def _gt(boxes, masks=None, labels=None, ids=None, valid=None, ignore=None,
        m=4):
  """Padded ground truth; masks default to the full box."""
  k = len(boxes)
  b = np.zeros((m, 4), np.float32)
  b[:k] = np.reshape(boxes, (k, 4))
  mk = np.zeros((m, H, W), bool)
  for i in range(k):
    if masks is not None and masks[i] is not None:
      mk[i] = masks[i]
    else:
      x1, y1, x2, y2 = (int(v) for v in boxes[i])
      mk[i, y1:y2, x1:x2] = True
  lab = np.zeros((m,), np.int32)
  lab[:k] = labels if labels is not None else np.arange(k) + 1
  idt = np.zeros((m,), np.int32)
  idt[:k] = ids if ids is not None else np.arange(k)
  val = np.zeros((m,), bool)
  val[:k] = True if valid is None else valid
  ign = np.zeros((H, W), bool) if ignore is None else ignore
  return {'boxes': b, 'labels': lab, 'ids': idt, 'masks': mk, 'valid': val,
          'ignore': ign}


def _with_centers(gt):
  """The targets take each mask's centre of mass and stride-4 samples (what
  the data pipeline computes); here from the full masks, in numpy."""
  g = dict(gt)
  masks = g.pop('masks')
  centers = np.zeros(masks.shape[:1] + (2,), np.float32)
  for m in range(masks.shape[0]):
    ys, xs = np.nonzero(masks[m])
    if len(xs):
      centers[m] = xs.mean(), ys.mean()
  g['centers'] = centers
  g['mask4'] = masks[:, 2::4, 2::4].astype(np.uint8)
  return g


def _assign(gt, **kw):
  g = {k: jnp.asarray(v) for k, v in _with_centers(gt).items()}
  out = T.fcos_targets(g, shapes=SHAPES, **kw)
  return {k: np.asarray(v) for k, v in out.items()}


def _reference(gt, lower_inclusive=True):
  """Independent per-location loops."""
  cls, idt, gti, ign, reg, ctr = [], [], [], [], [], []
  for (h, w), s, (lo, hi) in zip(SHAPES, locations.STRIDES, RANGES):
    for i in range(h):
      for j in range(w):
        x, y = j * s + s // 2, i * s + s // 2
        best, best_area = -1, None
        for m in range(len(gt['boxes'])):
          if not gt['valid'][m]:
            continue
          x1, y1, x2, y2 = (float(v) for v in gt['boxes'][m])
          ys, xs = np.nonzero(gt['masks'][m])
          cx, cy = (xs.mean(), ys.mean()) if len(xs) else (0.0, 0.0)
          rx1, ry1 = max(cx - 1.5 * s, x1), max(cy - 1.5 * s, y1)
          rx2, ry2 = min(cx + 1.5 * s, x2), min(cy + 1.5 * s, y2)
          if not (rx1 < x < rx2 and ry1 < y < ry2):
            continue
          mx = max(x - x1, y - y1, x2 - x, y2 - y)
          if not ((mx >= lo if lower_inclusive else mx > lo) and mx <= hi):
            continue
          area = (x2 - x1) * (y2 - y1)
          if best_area is None or area < best_area:
            best, best_area = m, area
        gti.append(best)
        if best >= 0:
          x1, y1, x2, y2 = (float(v) for v in gt['boxes'][best])
          l, t, r, b = x - x1, y - y1, x2 - x, y2 - y
          reg.append((l, t, r, b))
          ctr.append(math.sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)))
          cls.append(gt['labels'][best])
          idt.append(gt['ids'][best])
          ign.append(False)
        else:
          reg.append((0, 0, 0, 0))
          ctr.append(0.0)
          cls.append(-1)
          idt.append(-1)
          ign.append(bool(gt['ignore'][min(y, H - 1), min(x, W - 1)]))
  return {'cls_target': np.array(cls), 'id_target': np.array(idt),
          'gt_index': np.array(gti), 'ignore': np.array(ign),
          'reg_target': np.array(reg, np.float32),
          'ctr_target': np.array(ctr, np.float32)}


def _check_reference(out, gt, **kw):
  ref = _reference(gt, **kw)
  for k in ('cls_target', 'id_target', 'gt_index', 'ignore'):
    np.testing.assert_array_equal(out[k], ref[k], err_msg=k)
  np.testing.assert_allclose(out['reg_target'], ref['reg_target'], atol=1e-5)
  np.testing.assert_allclose(out['ctr_target'], ref['ctr_target'], atol=1e-6)


def _positives(out, m):
  """Sorted (level stride, x, y) of the locations assigned to instance m."""
  locs, stride, _ = locations.location_table(SHAPES)
  sel = np.nonzero(out['gt_index'] == m)[0]
  return sorted((int(stride[i]), int(locs[i, 0]), int(locs[i, 1]))
                for i in sel)


def test_level_shapes_and_location_table():
  assert locations.level_shapes((H, W)) == SHAPES
  assert locations.level_shapes((384, 640)) == ((48, 80), (24, 40), (12, 20),
                                        (6, 10), (3, 5))
  locs, stride, level = locations.location_table(SHAPES)
  lo, hi = T.size_ranges(SHAPES)
  assert locs.shape == (96 + 24 + 6 + 2 + 1, 2)
  np.testing.assert_array_equal(locs[:3], [[4, 4], [12, 4], [20, 4]])
  np.testing.assert_array_equal(locs[12], [4, 12])  # row-major
  np.testing.assert_array_equal(locs[96], [8, 8])  # P4 starts
  np.testing.assert_array_equal(locs[-1], [64, 64])  # P7
  assert stride[95] == 8 and stride[96] == 16 and stride[-1] == 128
  assert lo[96] == 64 and hi[96] == 128 and np.isinf(hi[-1])
  assert level[-1] == 4


def test_two_boxes_hand_counted_and_smallest_box_wins():
  # A: 32x32 box at (8, 8), centre of mass 23.5 -> P3 region (11.5, 35.5):
  # x, y in {12, 20, 28}: 9 locations. B: 64x64 box at 0, centre 31.5 ->
  # (19.5, 43.5): {20, 28, 36}^2, of which {20, 28}^2 go to the smaller A.
  gt = _gt([[8, 8, 40, 40], [0, 0, 64, 64]], labels=[3, 5], ids=[7, 19])
  out = _assign(gt)
  a = [(8, x, y) for y in (12, 20, 28) for x in (12, 20, 28)]
  b = [(8, x, y) for y in (20, 28, 36) for x in (20, 28, 36)
       if not (x < 36 and y < 36)]
  assert _positives(out, 0) == sorted(a)
  assert _positives(out, 1) == sorted(b)
  assert (out['gt_index'] >= 0).sum() == 14
  assert set(out['cls_target'][out['gt_index'] == 0]) == {3}
  assert set(out['cls_target'][out['gt_index'] == 1]) == {5}
  assert set(out['id_target'][out['gt_index'] == 1]) == {19}
  # location (12, 12) = index 1*12 + 1: l, t, r, b = 4, 4, 28, 28
  np.testing.assert_allclose(out['reg_target'][13], [4, 4, 28, 28])
  np.testing.assert_allclose(out['ctr_target'][13], 4 / 28, rtol=1e-6)
  # (36, 36) -> B: 36, 36, 28, 28
  i = 4 * 12 + 4
  np.testing.assert_allclose(out['reg_target'][i], [36, 36, 28, 28])
  np.testing.assert_allclose(out['ctr_target'][i], 28 / 36, rtol=1e-6)
  assert out['mask_target'].shape == (4, 16, 24)
  _check_reference(out, gt)


def test_equal_areas_go_to_the_lower_index():
  gt = _gt([[8, 8, 40, 40], [8, 8, 40, 40]])
  out = _assign(gt)
  assert (out['gt_index'] == 0).sum() == 9
  assert (out['gt_index'] == 1).sum() == 0


def test_centre_of_mass_not_box_centre():
  # the mask is the box's left 8-pixel strip: centre (3.5, 23.5) -> P3 x in
  # (-8.5, 15.5) = {4, 12}, y in (11.5, 35.5) = {12, 20, 28}
  mask = np.zeros((H, W), bool)
  mask[0:48, 0:8] = True
  gt = _gt([[0, 0, 48, 48]], masks=[mask])
  out = _assign(gt)
  assert _positives(out, 0) == sorted(
      (8, x, y) for x in (4, 12) for y in (12, 20, 28))
  _check_reference(out, gt)


def test_centre_region_clipped_to_box():
  # centre (45.5, 49.5), P3 region (33.5, 57.5) x (37.5, 61.5) but clipped to
  # the box (40, 52) x (40, 60): x = 44 only, y in {44, 52}
  gt = _gt([[40, 40, 52, 60]])
  out = _assign(gt)
  assert _positives(out, 0) == [(8, 44, 44), (8, 44, 52)]
  _check_reference(out, gt)


def test_regress_range_boundaries():
  # P3 upper bound 64 is inclusive: box x2 = 68 gives r = 64 at x = 4.
  mask = np.zeros((H, W), bool)
  mask[0:16, 0:10] = True  # centre (4.5, 7.5)
  gt = _gt([[0, 0, 68, 16]], masks=[mask])
  out = _assign(gt)
  assert _positives(out, 0) == [(8, 4, 4), (8, 4, 12), (8, 12, 4),
                                (8, 12, 12)]
  _check_reference(out, gt)
  # P4 lower bound 64: box x2 = 72 gives max = r = 64 at P4 location (8, 8)
  mask = np.zeros((H, W), bool)
  mask[0:16, 0:16] = True  # centre (7.5, 7.5)
  gt = _gt([[0, 0, 72, 16]], masks=[mask])
  incl = _assign(gt)
  # P3: x in {4, 12}, y in {4, 12}; x = 4 has r = 68 > 64, x = 12 r = 60
  assert _positives(incl, 0) == [(8, 12, 4), (8, 12, 12), (16, 8, 8)]
  _check_reference(incl, gt)
  excl = _assign(gt, range_lower_inclusive=False)
  assert _positives(excl, 0) == [(8, 12, 4), (8, 12, 12)]
  _check_reference(excl, gt, lower_inclusive=False)


def test_random_frames_match_reference():
  """Random boxes (some large enough for P4..P7) with random blob masks."""
  rng = np.random.default_rng(1)
  for _ in range(4):
    boxes, masks = [], []
    for _ in range(4):
      w = int(rng.integers(4, W + 1))
      h = int(rng.integers(4, H + 1))
      x1 = int(rng.integers(0, W - w + 1))
      y1 = int(rng.integers(0, H - h + 1))
      boxes.append([x1, y1, x1 + w, y1 + h])
      mk = np.zeros((H, W), bool)
      mk[y1:y1 + h, x1:x1 + w] = rng.random((h, w)) < rng.uniform(0.2, 0.9)
      masks.append(mk)
    ign = np.zeros((H, W), bool)
    ign[rng.integers(0, H):, rng.integers(0, W):] = True
    gt = _gt(boxes, masks=masks, ignore=ign,
             valid=rng.random(4) < 0.8, ids=rng.integers(0, 20, 4))
    _check_reference(_assign(gt), gt)
  # a box covering the whole image reaches the upper levels
  gt = _gt([[0, 0, 96, 64], [0, 0, 90, 20]])
  out = _assign(gt)
  _check_reference(out, gt)
  # P3 (36..52, 20..36) has max <= 64 for the first box, so it has positives
  assert (out['gt_index'] == 0).sum() > 0


def test_ignore_regions_and_padding():
  ign = np.zeros((H, W), bool)
  ign[0:16, 80:96] = True   # P3 (84|92, 4|12) and P4 (88, 8)
  ign[8:40, 8:40] = True    # covers A's positives: they stay positives
  gt = _gt([[8, 8, 40, 40], [50, 30, 90, 60]], valid=[True, False],
           ignore=ign)
  out = _assign(gt)
  assert (out['gt_index'] == 1).sum() == 0  # invalid entries never assigned
  assert (out['gt_index'] == 0).sum() == 9
  assert not np.any(out['ignore'] & (out['gt_index'] >= 0))
  locs, _, _ = locations.location_table(SHAPES)
  ignored = sorted(map(tuple, locs[out['ignore']].astype(int).tolist()))
  expected = [(84, 4), (92, 4), (84, 12), (92, 12), (88, 8),
              (36, 12), (36, 20), (36, 28), (12, 36), (20, 36), (28, 36),
              (36, 36), (24, 24), (24, 8), (8, 24), (8, 8), (16, 16),
              (32, 32)]
  # A's 9 positives (12..28)^2 are not ignored; the P3 neighbours at 36
  # (row/column), the P4 locations (8|24, 8|24), the P5 (16, 16) and the
  # P6 (32, 32) are.
  assert ignored == sorted(expected)
  _check_reference(out, gt)


def test_empty_frame_and_batched_vmap_jit():
  gts = [_gt([[8, 8, 40, 40], [0, 0, 64, 64]]), _gt([], m=4),
         _gt([[40, 40, 52, 60]], valid=[False])]
  cg = [_with_centers(g) for g in gts]
  batch = {k: jnp.asarray(np.stack([g[k] for g in cg])) for k in cg[0]}
  fn = jax.jit(lambda g: T.batch_targets(g, shapes=SHAPES))
  out = {k: np.asarray(v) for k, v in fn(batch).items()}
  assert out['gt_index'].shape == (3, 129)
  assert out['reg_target'].shape == (3, 129, 4)
  assert out['mask_target'].shape == (3, 4, 16, 24)
  for f, g in enumerate(gts):
    _check_reference({k: v[f] for k, v in out.items()}, g)
  assert np.all(out['gt_index'][1:] == -1)
  assert np.all(np.isfinite(out['ctr_target']))


def test_mask_targets_offset_two():
  m = np.random.default_rng(0).random((2, H, W)) > 0.5
  t = np.asarray(T.mask_targets(jnp.asarray(m)))
  assert t.shape == (2, 16, 24) and t.dtype == np.float32
  np.testing.assert_array_equal(t[1, 3, 5], m[1, 3 * 4 + 2, 5 * 4 + 2])
  np.testing.assert_array_equal(t, m[:, 2::4, 2::4])


def test_clip_ground_truth_from_a_batch():
  """targets.clip_ground_truth: clip-major frames, labels broadcast over
  time, valid = present & real instance & ID target, ignore from the id_map."""
  b, t, m = 2, 3, 4
  rng = np.random.default_rng(0)
  id_map = np.full((b, t, H, W), 255, np.uint8)
  id_map[1, 2, 50:60, 0:10] = 254
  batch = {
      'id_map': id_map,
      'label': np.array([[4, 2, -1, -1], [1, -1, -1, -1]], np.int32),
      'id_target': np.where(rng.random((b, t, m)) < 0.5, m - 1, -1
                            ).astype(np.int32),
      'present': rng.random((b, t, m)) < 0.7,
      'box': rng.uniform(0, 50, (b, t, m, 4)).astype(np.float32),
      'center': rng.uniform(0, 50, (b, t, m, 2)).astype(np.float32),
      'mask4': rng.integers(0, 2, (b, t, m, H // 4, W // 4), dtype=np.uint8),
  }
  batch['id_target'][0, 0, 0] = 0
  batch['present'][0, 0, 0] = True
  g = {k: np.asarray(v) for k, v in T.clip_ground_truth(
      {k: jnp.asarray(v) for k, v in batch.items()}).items()}
  assert g['boxes'].shape == (b * t, m, 4)
  for clip in range(b):
    for step in range(t):
      f = clip * t + step  # clip-major
      np.testing.assert_array_equal(g['boxes'][f], batch['box'][clip, step])
      np.testing.assert_array_equal(g['centers'][f], batch['center'][clip, step])
      np.testing.assert_array_equal(g['mask4'][f], batch['mask4'][clip, step])
      want = (batch['present'][clip, step] & (batch['label'][clip] >= 0)
              & (batch['id_target'][clip, step] >= 0))
      np.testing.assert_array_equal(g['valid'][f], want)
      np.testing.assert_array_equal(g['labels'][f],
                                    np.maximum(batch['label'][clip], 0))
  assert g['valid'][0, 0] and g['ids'][0, 0] == 0
  np.testing.assert_array_equal(g['ignore'][5], id_map[1, 2] == 254)
  assert not g['ignore'][:5].any()
