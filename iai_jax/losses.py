"""IAI training losses: focal (classes, IDs), GIoU, centerness, dice masks.

All functions work on padded, static shapes and run under ``jax.jit``.  The
per-frame loss is (section 4 of the design card)

  L = L_cls + L_id + L_box + L_ctr + L_mask

* L_cls, L_id: sigmoid focal loss (alpha 0.25, gamma 2) over every location
  that is not ignored, one-hot targets (background = all-zero row), summed and
  divided by max(num_pos, 1);
* L_box: GIoU loss of the boxes given by the predicted and target (l, t, r, b)
  distances around the same location, over the positives, weighted by the
  centerness target and divided by the sum of centerness targets;
* L_ctr: binary cross-entropy with logits on centerness over the positives,
  divided by max(num_pos, 1);
* L_mask: dice loss of every positive location (dynamic mask head at the
  mask features' stride, aligned bilinear to stride 4, sigmoid) against its
  instance's own stride-4 ground truth, divided by the number of positives.

:func:`iai_losses` sums each part over the clips of one time step, divides
by that step's normaliser (over the whole batch, as the authors' per-step
``reduce_mean`` across GPUs does), and averages the steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from iai_jax.models import locations
from iai_jax.models.condinst import dynamic_mask_head, mask_logits_at_stride4

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
DICE_EPS = 1e-5
GIOU_EPS = 1e-6  # mmdet's GIoULoss
LOSS_KEYS = ('cls', 'id', 'box', 'ctr', 'mask')


def bce_with_logits(logits, targets):
  """Elementwise, numerically stable BCE of sigmoid(logits) and targets."""
  x = logits.astype(jnp.float32)
  t = targets.astype(jnp.float32)
  return jnp.maximum(x, 0.0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))


def sigmoid_focal_loss(logits, targets, alpha: float = FOCAL_ALPHA,
                       gamma: float = FOCAL_GAMMA):
  """Elementwise sigmoid focal loss (RetinaNet), not reduced.

  ce * (1 - p_t)^gamma * alpha_t with p_t = p if t == 1 else 1 - p and
  alpha_t = alpha if t == 1 else 1 - alpha (``alpha < 0`` disables it).
  """
  t = targets.astype(jnp.float32)
  p = jax.nn.sigmoid(logits.astype(jnp.float32))
  ce = bce_with_logits(logits, t)
  p_t = p * t + (1.0 - p) * (1.0 - t)
  loss = ce * (1.0 - p_t) ** gamma
  if alpha >= 0:
    loss = loss * (alpha * t + (1.0 - alpha) * (1.0 - t))
  return loss


def focal_loss_sum(logits, target_index, weight, alpha: float = FOCAL_ALPHA,
                   gamma: float = FOCAL_GAMMA):
  """Summed focal loss of (L, C) logits against class indices (L,) (-1 =
  background, an all-zero row), each location's row scaled by weight (L,)."""
  onehot = jax.nn.one_hot(target_index, logits.shape[-1], dtype=jnp.float32)
  loss = sigmoid_focal_loss(logits, onehot, alpha, gamma).sum(-1)
  return jnp.sum(loss * weight.astype(jnp.float32))


def giou(boxes_a, boxes_b, eps: float = GIOU_EPS):
  """Generalised IoU of matching (..., 4) x1, y1, x2, y2 boxes -> (...,)."""
  a = boxes_a.astype(jnp.float32)
  b = boxes_b.astype(jnp.float32)
  area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
  area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  iw = jnp.maximum(jnp.minimum(a[..., 2], b[..., 2])
                   - jnp.maximum(a[..., 0], b[..., 0]), 0.0)
  ih = jnp.maximum(jnp.minimum(a[..., 3], b[..., 3])
                   - jnp.maximum(a[..., 1], b[..., 1]), 0.0)
  inter = iw * ih
  union = area_a + area_b - inter
  iou = inter / jnp.maximum(union, eps)
  cw = jnp.maximum(a[..., 2], b[..., 2]) - jnp.minimum(a[..., 0], b[..., 0])
  ch = jnp.maximum(a[..., 3], b[..., 3]) - jnp.minimum(a[..., 1], b[..., 1])
  enclose = cw * ch
  return iou - (enclose - union) / jnp.maximum(enclose, eps)


def ltrb_to_boxes(ltrb):
  """(..., 4) l, t, r, b distances -> boxes x1, y1, x2, y2 around (0, 0)."""
  return jnp.stack([-ltrb[..., 0], -ltrb[..., 1], ltrb[..., 2], ltrb[..., 3]],
                   axis=-1)


def giou_loss(pred_ltrb, target_ltrb):
  """Elementwise 1 - GIoU of the boxes two (l, t, r, b) sets give around the
  same location -> (...,)."""
  return 1.0 - giou(ltrb_to_boxes(pred_ltrb), ltrb_to_boxes(target_ltrb))


def dice_loss(probs, targets, eps: float = DICE_EPS):
  """(K, ...) -> (K,): 1 - 2 sum(p g) / (sum(p^2) + sum(g^2) + eps)."""
  k = probs.shape[0]
  p = probs.reshape(k, -1).astype(jnp.float32)
  g = targets.reshape(k, -1).astype(jnp.float32)
  inter = jnp.sum(p * g, axis=1)
  union = jnp.sum(p * p, axis=1) + jnp.sum(g * g, axis=1) + eps
  return 1.0 - 2.0 * inter / union


def select_mask_samples(gt_index, num_samples: int, num_instances: int,
                        key=None):
  """Choose ``num_samples`` positive locations of one frame.

  Args:
    gt_index: (L,) assigned instance per location, -1 for background.
    num_samples: K, static.
    num_instances: M, static.
    key: optional PRNG key.  With a key: a uniformly random subset of the
      positives (as CondInst's ``max_proposals``).  Without: deterministic
      round robin over the instances (every instance's first positive in
      location order, then every instance's second, ...), so that each
      instance gets samples when there are more positives than K.
  Returns:
    (indices (K,) int32, valid (K,) bool); invalid entries (fewer than K
    positives) point at an arbitrary location and must be masked out.
  """
  n = gt_index.shape[0]
  k = min(num_samples, n)
  pos = gt_index >= 0
  if key is not None:
    score = jax.random.uniform(key, (n,))
  else:
    onehot = gt_index[:, None] == jnp.arange(num_instances)[None, :]
    rank = jnp.cumsum(onehot.astype(jnp.int32), axis=0) - 1
    rank = jnp.take_along_axis(rank, jnp.maximum(gt_index, 0)[:, None],
                               axis=1)[:, 0]
    rank = jnp.minimum(rank, k)  # ranks past K never matter
    score = -(rank.astype(jnp.float32) * n + jnp.arange(n, dtype=jnp.float32))
  score = jnp.where(pos, score, -jnp.inf)
  _, idx = jax.lax.top_k(score, k)
  idx = idx.astype(jnp.int32)
  valid = pos[idx]
  if k < num_samples:  # fewer locations than samples: pad
    pad = num_samples - k
    idx = jnp.concatenate([idx, jnp.zeros((pad,), jnp.int32)])
    valid = jnp.concatenate([valid, jnp.zeros((pad,), bool)])
  return idx, valid


def mask_loss_frame(mask_feats, ctrl, gt_index, mask_target, locations,
                    strides, num_samples: int, key=None):
  """Dice loss of one frame's sampled positives.

  Args:
    mask_feats: (H/s, W/s, 8) F_mask at stride s = 8 or 4.
    ctrl: (L, 169) controller outputs at every location.
    gt_index: (L,) assigned instance or -1.
    mask_target: (M, H/4, W/4) stride-4 ground truth.
    locations: (L, 2) (x, y); strides: (L,) level stride per location.
  Returns:
    (sum of the dice losses of the valid samples, number of valid samples).
  """
  m = mask_target.shape[0]
  idx, valid = select_mask_samples(gt_index, num_samples, m, key)
  feat_stride = 4 * mask_target.shape[1] // mask_feats.shape[0]
  logits = dynamic_mask_head(mask_feats, ctrl[idx], locations[idx],
                             strides[idx], feat_stride)  # (K, h, w)
  logits = mask_logits_at_stride4(logits, feat_stride)
  if logits.shape[1:] != mask_target.shape[1:]:
    raise ValueError(f'stride-4 mask logits {logits.shape[1:]} and targets '
                     f'{mask_target.shape[1:]} differ')
  gt = mask_target[jnp.maximum(gt_index[idx], 0)]
  dice = dice_loss(jax.nn.sigmoid(logits), gt)
  v = valid.astype(jnp.float32)
  return jnp.sum(dice * v), jnp.sum(v)


def flatten_levels(per_level):
  """List of (F, h_l, w_l, C) -> (F, L, C), levels concatenated row-major."""
  return jnp.concatenate(
      [x.reshape(x.shape[0], -1, x.shape[-1]) for x in per_level], axis=1)


# At most 3 x 3 locations of a level lie strictly inside an instance's
# centre region (1.5 strides either side of its centre of mass), and the size
# ranges let an instance have positives on at most two levels.
MAX_POSITIVES_PER_INSTANCE = 18


def iai_losses(outputs: dict, targets: dict, *, time_steps: int = 1,
               max_mask_samples: int = 0, key=None,
               focal_alpha: float = FOCAL_ALPHA,
               focal_gamma: float = FOCAL_GAMMA,
               strides: tuple = locations.STRIDES) -> dict:
  """The IAI losses of F = B x T frames (clip-major: clip b's frame t at
  b*T + t), as the authors' head computes them once per time step.

  Args:
    outputs: :meth:`IAI.decode` output: lists 'cls' (F,h,w,P), 'id'
      (F,h,w,N), 'reg' (F,h,w,4), 'ctr' (F,h,w,1), 'ctrl' (F,h,w,169) over the
      levels, and 'mask_feats' (F, H/s, W/s, 8).
    targets: :func:`iai_jax.targets.batch_targets` of the same F frames:
      'cls_target', 'id_target', 'gt_index' (F, L) int, 'reg_target'
      (F, L, 4), 'ctr_target' (F, L), 'ignore' (F, L) bool and 'mask_target'
      (F, M, H/4, W/4).
    time_steps: T.
    max_mask_samples: 0 (the recipe): the mask loss of every positive
      location (static bound: min(L, 18 M) per frame, never reached);
      K > 0: a random K of them per frame (less memory).
    key: PRNG key for that random choice.
  Returns:
    {'cls', 'id', 'box', 'ctr', 'mask', 'total'} scalars. For each time step
    the sums over the B clips are divided by the step's normalisers (number
    of positive locations; the sum of centerness targets for the box loss;
    the number of mask samples for the dice loss); the T step losses are
    averaged; total = the sum of the five.
  """
  shapes = locations.output_level_shapes(outputs)
  locs, loc_strides, _ = locations.location_table(shapes, tuple(strides))
  locs = jnp.asarray(locs)
  loc_strides = jnp.asarray(loc_strides)
  cls = flatten_levels(outputs['cls'])
  ids = flatten_levels(outputs['id'])
  reg = flatten_levels(outputs['reg'])
  ctr = flatten_levels(outputs['ctr'])[..., 0]
  ctrl = flatten_levels(outputs['ctrl'])
  f, n_loc = cls.shape[:2]
  if targets['cls_target'].shape != (f, n_loc):
    raise ValueError(f'targets for {targets["cls_target"].shape} locations, '
                     f'outputs have {(f, n_loc)}')
  if f % time_steps:
    raise ValueError(f'{f} frames are not clips of {time_steps} time steps')

  def per_step(x):  # (F,) per-frame sums -> (T,) sums over the clips
    return x.reshape(f // time_steps, time_steps).sum(axis=0)

  gt_index = targets['gt_index']
  pos = (gt_index >= 0).astype(jnp.float32)  # (F, L)
  weight = 1.0 - targets['ignore'].astype(jnp.float32)
  ctr_t = targets['ctr_target'].astype(jnp.float32) * pos

  pos_norm = jnp.maximum(per_step(pos.sum(axis=1)), 1.0)  # (T,)
  ctr_norm = jnp.maximum(per_step(ctr_t.sum(axis=1)), 1e-6)

  focal = jax.vmap(lambda x, t, w: focal_loss_sum(x, t, w, focal_alpha,
                                                  focal_gamma))
  cls_t = per_step(focal(cls, targets['cls_target'], weight)) / pos_norm
  id_t = per_step(focal(ids, targets['id_target'], weight)) / pos_norm
  box_l = giou_loss(reg, targets['reg_target'])  # (F, L)
  box_t = per_step(jnp.sum(jnp.where(pos > 0, box_l, 0.0) * ctr_t,
                           axis=1)) / ctr_norm
  ctr_l = bce_with_logits(ctr, targets['ctr_target'])
  ctr_t_loss = per_step(jnp.sum(ctr_l * pos, axis=1)) / pos_norm

  m = targets['mask_target'].shape[1]
  if max_mask_samples:
    num_samples = max_mask_samples
  else:
    num_samples, key = min(n_loc, MAX_POSITIVES_PER_INSTANCE * m), None
  keys = None if key is None else jax.random.split(key, f)
  mask_fn = lambda mf, c, g, mt, k: mask_loss_frame(
      mf, c, g, mt, locs, loc_strides, num_samples, k)
  if keys is None:
    m_sum, m_cnt = jax.vmap(lambda a, b, c, d: mask_fn(a, b, c, d, None))(
        outputs['mask_feats'], ctrl, gt_index, targets['mask_target'])
  else:
    m_sum, m_cnt = jax.vmap(mask_fn)(outputs['mask_feats'], ctrl, gt_index,
                                     targets['mask_target'], keys)
  mask_t = per_step(m_sum) / jnp.maximum(per_step(m_cnt), 1.0)

  out = {'cls': cls_t.mean(), 'id': id_t.mean(), 'box': box_t.mean(),
         'ctr': ctr_t_loss.mean(), 'mask': mask_t.mean()}
  out['total'] = sum(out[k] for k in LOSS_KEYS)
  return out
