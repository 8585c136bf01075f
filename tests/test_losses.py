"""Losses against hand-worked values and an independent numpy computation."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from iai_jax import losses as LS
from iai_jax import targets as T
from iai_jax.models import locations

H, W = 64, 96
SHAPES = ((8, 12), (4, 6), (2, 3), (1, 2), (1, 1))
P, N, M = 3, 5, 4


# ---------------------------------------------------------------- pieces


def test_focal_loss_hand_values():
  # logit 0: p = 0.5, ce = log 2, (1 - p_t)^2 = 1/4
  x = jnp.array([0.0, 0.0, 2.0, 2.0, -3.0])
  t = jnp.array([1.0, 0.0, 1.0, 0.0, 0.0])
  got = np.asarray(LS.sigmoid_focal_loss(x, t))
  p2 = 1 / (1 + math.exp(-2))
  p3 = 1 / (1 + math.exp(3))
  want = [0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2),
          -0.25 * (1 - p2) ** 2 * math.log(p2),
          -0.75 * p2 ** 2 * math.log(1 - p2),
          -0.75 * p3 ** 2 * math.log(1 - p3)]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(got[0], 0.0433217, rtol=1e-5)
  np.testing.assert_allclose(got[1], 0.1299651, rtol=1e-5)
  # large logits stay finite
  big = LS.sigmoid_focal_loss(jnp.array([80.0, -80.0]), jnp.array([0.0, 1.0]))
  assert np.all(np.isfinite(np.asarray(big)))
  np.testing.assert_allclose(np.asarray(big), [0.75 * 80, 0.25 * 80],
                             rtol=1e-5)


def test_focal_loss_sum_one_hot_background_and_weight():
  logits = jnp.array([[0.0, 1.0, -1.0], [2.0, 0.0, 0.5], [0.3, 0.3, 0.3]])
  target = jnp.array([1, -1, 2])
  weight = jnp.array([1.0, 1.0, 0.0])  # third location ignored
  got = float(LS.focal_loss_sum(logits, target, weight))
  want = 0.0
  for i, c in ((0, 1), (1, -1)):
    for k in range(3):
      p = 1 / (1 + math.exp(-float(logits[i, k])))
      want += (-0.25 * (1 - p) ** 2 * math.log(p) if k == c
               else -0.75 * p ** 2 * math.log(1 - p))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_giou_hand_values():
  a = jnp.array([[0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 1, 1],
                 [0, 0, 4, 2]], jnp.float32)
  b = jnp.array([[1, 1, 3, 3], [2, 0, 3, 1], [0, 0, 2, 2], [3, 3, 4, 4],
                 [1, 0, 3, 2]], jnp.float32)
  got = np.asarray(LS.giou(a, b))
  want = [1 / 7 - 2 / 9,          # overlap 1, union 7, hull 9
          0 - (3 - 2) / 3,        # apart side by side: hull 3x1
          1.0,                    # identical
          0 - (16 - 2) / 16,      # diagonal apart: hull 4x4
          4 / 8]                  # b inside a: iou 1/2, hull = a
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_giou_loss_from_distances():
  pred = jnp.array([[1, 1, 1, 1], [2, 2, 2, 2], [0, 0, 4, 4], [0, 0, 0, 0]],
                   jnp.float32)
  tgt = jnp.array([[2, 2, 2, 2], [2, 2, 2, 2], [4, 4, 0, 0], [1, 1, 1, 1]],
                  jnp.float32)
  got = np.asarray(LS.giou_loss(pred, tgt))
  # 1: 2x2 inside 4x4 -> iou 1/4 = giou. 3: boxes (0,0,4,4) and (-4,-4,0,0)
  # touch at the location: iou 0, hull 8x8, union 32 -> giou -1/2.
  # 4: a point prediction inside a 2x2 box: iou 0, hull = the box -> 0.
  np.testing.assert_allclose(got, [0.75, 0.0, 1.5, 1.0], rtol=1e-6)


def test_dice_loss_tiny_masks():
  p = jnp.array([[[0.5, 1.0], [0.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]],
                 [[1.0, 0.0], [0.0, 0.0]]])
  g = jnp.array([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]],
                 [[1.0, 0.0], [0.0, 0.0]]])
  got = np.asarray(LS.dice_loss(p, g))
  np.testing.assert_allclose(
      got, [1 - 3.0 / (1.5 + 2.0 + 1e-5), 1.0, 1 - 2.0 / (2.0 + 1e-5)],
      rtol=1e-6, atol=1e-7)


def test_select_mask_samples_round_robin_and_random():
  gt = jnp.array([-1, 0, 0, 1, 0, -1, 2, 1, 1, 0, -1, 2])
  idx, valid = LS.select_mask_samples(gt, 5, 3)
  # round 1: first of instances 0, 1, 2 (1, 3, 6); round 2: 2, 7 (location
  # order within the round)
  assert list(np.asarray(idx)) == [1, 3, 6, 2, 7]
  assert np.all(np.asarray(valid))
  idx, valid = LS.select_mask_samples(gt, 12, 3)
  assert np.asarray(valid).sum() == 9
  assert sorted(np.asarray(idx)[np.asarray(valid)]) == [1, 2, 3, 4, 6, 7, 8,
                                                        9, 11]
  idx, valid = LS.select_mask_samples(gt, 16, 3)  # more samples than locations
  assert idx.shape == (16,) and np.asarray(valid).sum() == 9
  for seed in range(3):
    idx, valid = LS.select_mask_samples(gt, 4, 3, jax.random.key(seed))
    idx = np.asarray(idx)
    assert np.all(np.asarray(valid)) and len(set(idx.tolist())) == 4
    assert np.all(np.asarray(gt)[idx] >= 0)
  none = jnp.full((12,), -1)
  _, valid = LS.select_mask_samples(none, 4, 3, jax.random.key(0))
  assert not np.any(np.asarray(valid))


# ------------------------------------------------------- numpy reference


def _np_aligned_bilinear(x, f):
  """CondInst's aligned bilinear on a (h, w) map, step by step."""
  h, w = x.shape
  x = np.pad(x, ((0, 1), (0, 1)), mode='edge')
  oh, ow = f * h + 1, f * w + 1
  ry = np.arange(oh) * h / (oh - 1)  # align_corners over h+1 samples
  rx = np.arange(ow) * w / (ow - 1)
  rows = np.stack([np.interp(ry, np.arange(h + 1), x[:, j])
                   for j in range(w + 1)], axis=1)
  out = np.stack([np.interp(rx, np.arange(w + 1), rows[i])
                  for i in range(oh)], axis=0)
  out = np.pad(out, ((f // 2, 0), (f // 2, 0)), mode='edge')
  return out[:f * h, :f * w]


def _np_dynamic_mask(feats, p, loc, stride, fs=8):
  h, w, _ = feats.shape
  ys, xs = np.mgrid[0:h, 0:w]
  rel = np.stack([(loc[0] - (xs * fs + fs // 2)) / (stride * 8.0),
                  (loc[1] - (ys * fs + fs // 2)) / (stride * 8.0)], -1)
  x = np.concatenate([rel, feats], -1)
  w0, w1, w2 = (p[:80].reshape(8, 10), p[80:144].reshape(8, 8),
                p[144:152].reshape(1, 8))
  b0, b1, b2 = p[152:160], p[160:168], p[168:169]
  x = np.maximum(x @ w0.T + b0, 0)
  x = np.maximum(x @ w1.T + b1, 0)
  return (x @ w2.T + b2)[..., 0]


def _sig(x):
  return 1 / (1 + np.exp(-x))


def _np_losses(outputs, tg, time_steps=1):
  """Loop reference (every positive is a mask sample). Frames are clips of
  ``time_steps`` frames, clip-major; each time step's sums over the clips
  are divided by that step's normalisers, and the steps averaged."""
  def flat(key):
    return np.concatenate([np.asarray(x).reshape(x.shape[0], -1, x.shape[-1])
                           for x in outputs[key]], axis=1)
  cls, ids, reg, ctr, ctrl = (flat(k) for k in ('cls', 'id', 'reg', 'ctr',
                                                'ctrl'))
  locs, strides, _ = locations.location_table(SHAPES)
  tg = {k: np.asarray(v) for k, v in tg.items()}
  sums = [{k: 0.0 for k in ('cls', 'id', 'npos', 'box', 'ctr_sum', 'bce',
                             'dice', 'ndice')} for _ in range(time_steps)]
  for f in range(cls.shape[0]):
    gti = tg['gt_index'][f]
    pos = gti >= 0
    acc = sums[f % time_steps]

    def focal(logits, target):
      tot = 0.0
      for i in range(logits.shape[0]):
        if tg['ignore'][f, i]:
          continue
        for c in range(logits.shape[1]):
          p = _sig(float(logits[i, c]))
          tot += (-0.25 * (1 - p) ** 2 * math.log(p) if target[i] == c
                  else -0.75 * p ** 2 * math.log(1 - p))
      return tot

    acc['cls'] += focal(cls[f], tg['cls_target'][f])
    acc['id'] += focal(ids[f], tg['id_target'][f])
    acc['npos'] += pos.sum()
    box, ctr_sum, bce, dice = 0.0, 0.0, 0.0, []
    for i in np.nonzero(pos)[0]:
      l, t, r, b = reg[f, i]
      tl, tt, tr, tb = tg['reg_target'][f, i]
      inter = (min(l, tl) + min(r, tr)) * (min(t, tt) + min(b, tb))
      union = (l + r) * (t + b) + (tl + tr) * (tt + tb) - inter
      hull = (max(l, tl) + max(r, tr)) * (max(t, tt) + max(b, tb))
      g = inter / union - (hull - union) / hull
      c = tg['ctr_target'][f, i]
      box += (1 - g) * c
      ctr_sum += c
      q = _sig(float(ctr[f, i, 0]))
      bce += -(c * math.log(q) + (1 - c) * math.log(1 - q))
      feats = np.asarray(outputs['mask_feats'][f])
      fs = H // feats.shape[0]  # F_mask stride: 8, or 4 (no upsampling)
      logit = _np_dynamic_mask(feats, ctrl[f, i], locs[i], strides[i], fs)
      prob = _sig(logit if fs == 4 else _np_aligned_bilinear(logit, 2))
      gt = tg['mask_target'][f, gti[i]]
      dice.append(1 - 2 * (prob * gt).sum()
                  / ((prob ** 2).sum() + (gt ** 2).sum() + 1e-5))
    acc['box'] += box
    acc['ctr_sum'] += ctr_sum
    acc['bce'] += bce
    acc['dice'] += sum(dice)
    acc['ndice'] += len(dice)
  parts = {k: [] for k in LS.LOSS_KEYS}
  for acc in sums:
    npos = max(acc['npos'], 1)
    parts['cls'].append(acc['cls'] / npos)
    parts['id'].append(acc['id'] / npos)
    parts['box'].append(acc['box'] / max(acc['ctr_sum'], 1e-6))
    parts['ctr'].append(acc['bce'] / npos)
    parts['mask'].append(acc['dice'] / acc['ndice'] if acc['ndice'] else 0.0)
  out = {k: float(np.mean(v)) for k, v in parts.items()}
  out['total'] = sum(out[k] for k in LS.LOSS_KEYS)
  return out


def _outputs(f, seed=0):
  rng = np.random.default_rng(seed)
  out = {k: [] for k in ('cls', 'id', 'reg', 'ctr', 'ctrl')}
  for (h, w), s in zip(SHAPES, locations.STRIDES):
    out['cls'].append(rng.normal(size=(f, h, w, P)) - 2)
    out['id'].append(rng.normal(size=(f, h, w, N)) - 2)
    out['reg'].append(np.abs(rng.normal(size=(f, h, w, 4))) * 2 * s + 0.5)
    out['ctr'].append(rng.normal(size=(f, h, w, 1)))
    out['ctrl'].append(rng.normal(size=(f, h, w, 169)) * 0.4)
  out = {k: [jnp.asarray(x, jnp.float32) for x in v] for k, v in out.items()}
  out['mask_feats'] = jnp.asarray(rng.normal(size=(f, H // 8, W // 8, 8)),
                                  jnp.float32)
  return out


def _frame_gt(boxes, valid=None, ids=None, ignore=None, seed=0):
  rng = np.random.default_rng(seed)
  b = np.zeros((M, 4), np.float32)
  masks = np.zeros((M, H, W), bool)
  for i, (x1, y1, x2, y2) in enumerate(boxes):
    b[i] = (x1, y1, x2, y2)
    masks[i, y1:y2, x1:x2] = rng.random((y2 - y1, x2 - x1)) < 0.7
  v = np.zeros((M,), bool)
  v[:len(boxes)] = True if valid is None else valid
  idt = np.zeros((M,), np.int32)
  idt[:len(boxes)] = (np.full(len(boxes), N - 1) if ids is None else ids)
  lab = np.zeros((M,), np.int32)
  lab[:len(boxes)] = np.arange(len(boxes)) % P
  ign = np.zeros((H, W), bool) if ignore is None else ignore
  return {'boxes': b, 'labels': lab, 'ids': idt, 'masks': masks, 'valid': v,
          'ignore': ign}


_batch_targets = jax.jit(functools.partial(T.batch_targets, shapes=SHAPES))
# eager op-by-op dispatch is slow on CPU: the tests jit, except where eager
# and jitted results are compared
_loss = jax.jit(LS.iai_losses, static_argnames=('max_mask_samples',
                                                'time_steps'))


def _targets(frames):
  """Targets of frames given with full masks: centres of mass and stride-4
  samples computed here, in numpy, as the data pipeline gives them."""
  g = {k: np.stack([fr[k] for fr in frames]) for k in frames[0]}
  masks = g.pop('masks')
  area = np.maximum(masks.sum(axis=(2, 3)), 1e-6)
  g['centers'] = np.stack(
      [(masks * np.arange(W)).sum(axis=(2, 3)) / area,
       (masks * np.arange(H)[:, None]).sum(axis=(2, 3)) / area], axis=-1
  ).astype(np.float32)
  g['mask4'] = masks[:, :, 2::4, 2::4].astype(np.uint8)
  return _batch_targets({k: jnp.asarray(v) for k, v in g.items()})


def _clip():
  ign = np.zeros((H, W), bool)
  ign[0:24, 64:96] = True
  frames = [
      _frame_gt([(8, 8, 40, 40), (0, 0, 64, 64), (50, 20, 90, 60)],
                ids=[N - 1, N - 1, N - 1], ignore=ign, seed=1),
      _frame_gt([(10, 6, 42, 38), (30, 2, 94, 62)], ids=[0, N - 1], seed=2),
  ]
  return _targets(frames)


@functools.lru_cache(maxsize=1)
def _clip_case():
  tg = _clip()
  out = _outputs(2)
  return out, tg


def test_iai_losses_match_numpy_reference():
  out, tg = _clip_case()
  npos = np.asarray(tg['gt_index'] >= 0).sum(1)
  assert np.all(npos > 0)
  assert np.asarray(tg['ignore']).sum() > 0
  # one clip of two frames: each time step normalised on its own
  got = _loss(out, tg, time_steps=2)
  want = _np_losses(out, tg, time_steps=2)
  assert set(got) == set(LS.LOSS_KEYS) | {'total'}
  for k in want:
    np.testing.assert_allclose(float(got[k]), want[k], rtol=2e-5, err_msg=k)
  assert all(want[k] > 0 for k in LS.LOSS_KEYS)


def test_normalisers_pool_the_clips_of_a_time_step():
  """Two clips of one frame: the step's sums over both clips are divided by
  the step's total positives (the authors' per-step reduce_mean over the
  whole batch), not each frame by its own."""
  out, tg = _clip_case()
  got = _loss(out, tg, time_steps=1)
  want = _np_losses(out, tg, time_steps=1)
  for k in want:
    np.testing.assert_allclose(float(got[k]), want[k], rtol=2e-5, err_msg=k)
  per_frame = _np_losses(out, tg, time_steps=2)
  for k in ('cls', 'id', 'ctr', 'mask'):
    assert abs(want[k] - per_frame[k]) > 1e-3 * abs(want[k]), k
  # (the two frames' box losses are close: pooled and per-frame differ by
  # 5e-5 of the loss here, above the 2e-5 agreement with the reference)
  assert abs(want['box'] - per_frame['box']) > 3e-5 * abs(want['box'])


def test_every_positive_is_a_mask_sample_by_default():
  out, tg = _clip_case()
  npos = int(np.asarray(tg['gt_index'] >= 0).sum(1).max())
  m = np.asarray(tg['mask_target']).shape[1]
  assert npos <= LS.MAX_POSITIVES_PER_INSTANCE * m
  full = _loss(out, tg, time_steps=2)  # max_mask_samples=0: all of them
  capped = _loss(out, tg, time_steps=2, max_mask_samples=npos)
  np.testing.assert_allclose(float(full['mask']), float(capped['mask']),
                             rtol=1e-6)
  fewer = _loss(out, tg, time_steps=2, max_mask_samples=4,
                key=jax.random.key(0))
  assert abs(float(fewer['mask']) - float(full['mask'])) > 1e-5


def test_mask_loss_with_stride_4_mask_features_matches_numpy():
  """A mask branch with out_stride 4: the dynamic head runs on the stride-4
  grid (pixel centres 4k+2) and its logits meet the targets unresampled."""
  out, tg = _clip_case()
  out = dict(out)
  rng = np.random.default_rng(7)
  out['mask_feats'] = jnp.asarray(rng.normal(size=(2, H // 4, W // 4, 8)),
                                  jnp.float32)
  got = _loss(out, tg, time_steps=2)
  want = _np_losses(out, tg, time_steps=2)
  np.testing.assert_allclose(float(got['mask']), want['mask'], rtol=2e-5)
  assert want['mask'] > 0


def test_iai_losses_jit_matches_eager_and_random_samples():
  out, tg = _clip_case()
  eager = LS.iai_losses(out, tg, max_mask_samples=8, key=jax.random.key(3))
  fn = jax.jit(functools.partial(LS.iai_losses, max_mask_samples=8))
  jitted = fn(out, tg, key=jax.random.key(3))
  # without a key (deterministic samples) too
  np.testing.assert_allclose(
      float(_loss(out, tg, max_mask_samples=8)['mask']),
      float(LS.iai_losses(out, tg, max_mask_samples=8)['mask']), rtol=1e-5)
  for k in eager:
    np.testing.assert_allclose(float(jitted[k]), float(eager[k]), rtol=1e-5,
                               err_msg=k)
  # only the mask part depends on the samples, and stays a mean of dice
  # values (in [0, 1])
  full = _loss(out, tg)
  for k in ('cls', 'id', 'box', 'ctr'):
    np.testing.assert_allclose(float(eager[k]), float(full[k]), rtol=1e-6)
  assert 0.0 < float(eager['mask']) < 1.0


def test_all_padding_frame_is_finite_with_finite_gradients():
  frames = [_frame_gt([]), _frame_gt([(8, 8, 40, 40)], valid=[False])]
  tg = _targets(frames)
  assert np.all(np.asarray(tg['gt_index']) == -1)
  out = _outputs(2, seed=5)
  got = _loss(out, tg)
  for k in ('box', 'ctr', 'mask'):
    assert float(got[k]) == 0.0, k
  want = _np_losses(out, tg)
  for k in want:  # cls / id: background focal terms divided by 1
    np.testing.assert_allclose(float(got[k]), want[k], rtol=2e-5, err_msg=k)
  grads = jax.jit(jax.grad(
      lambda o: LS.iai_losses(o, tg, max_mask_samples=16)['total']))(out)
  assert all(np.all(np.isfinite(np.asarray(g)))
             for g in jax.tree_util.tree_leaves(grads))


def test_gradients_finite_with_zero_predicted_distances():
  out, tg = _clip_case()
  out = dict(out)
  out['reg'] = [jnp.zeros_like(x) for x in out['reg']]  # ReLU'd to zero
  val, grads = jax.jit(jax.value_and_grad(
      lambda o: LS.iai_losses(o, tg, max_mask_samples=16)['total']))(out)
  assert np.isfinite(float(val))
  assert all(np.all(np.isfinite(np.asarray(g)))
             for g in jax.tree_util.tree_leaves(grads))
