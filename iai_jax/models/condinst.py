"""FPN, CondInst head (with IAI's ID head), mask branch and dynamic mask head."""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from iai_jax.models.inits import torch_default as _torch_default
from iai_jax.models.inits import torch_default_bias
from iai_jax.models.layers import Conv1x1, Conv3x3, aligned_bilinear
from iai_jax.models.locations import STRIDES, grid_locations

_xavier = nn.initializers.xavier_uniform()
_normal001 = nn.initializers.normal(0.01)

# Dynamic mask head: three 1x1 convs 10->8, 8->8, 8->1 (weights then biases).
MASK_CHANNELS = 8  # F_mask channels: the 169 dynamic parameters assume 8
DYN_IN = 2 + MASK_CHANNELS  # 2 relative coordinates + 8 mask-feature channels
DYN_WEIGHTS = (80, 64, 8)
DYN_BIASES = (8, 8, 1)
DYN_PARAMS = sum(DYN_WEIGHTS) + sum(DYN_BIASES)  # 169


class FPN(nn.Module):
  """P3..P7 from C3, C4, C5'. P6 = stride-2 conv of the P5 output (no ReLU),
  P7 = stride-2 conv of ReLU(P6): mmdet's FPN with ``add_extra_convs`` on
  the outputs and ``relu_before_extra_convs``, which applies the ReLU from
  the second extra level on."""
  channels: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats: Sequence[jax.Array]):
    lat = [Conv1x1(self.channels, kernel_init=_xavier, dtype=self.dtype,
                   name=f'lateral_{i}')(f) for i, f in enumerate(feats)]
    for i in range(len(lat) - 1, 0, -1):
      up = jnp.repeat(jnp.repeat(lat[i], 2, axis=1), 2, axis=2)
      lat[i - 1] = lat[i - 1] + up[:, :lat[i - 1].shape[1], :lat[i - 1].shape[2]]
    outs = [Conv3x3(self.channels, kernel_init=_xavier, dtype=self.dtype,
                    name=f'output_{i}')(l)
            for i, l in enumerate(lat)]
    x = outs[-1]
    for i in range(2):
      x = Conv3x3(self.channels, stride=2, kernel_init=_xavier,
                  dtype=self.dtype, name=f'output_{len(lat) + i}')(
                      x if i == 0 else nn.relu(x))
      outs.append(x)
    return outs


class ConvGN(nn.Module):
  """3x3 conv (no bias) + GroupNorm + ReLU, the head towers' unit."""
  channels: int
  groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = Conv3x3(self.channels, use_bias=False, kernel_init=_normal001,
                dtype=self.dtype, name='conv')(x)
    x = nn.GroupNorm(num_groups=self.groups, epsilon=1e-5, dtype=self.dtype,
                     name='gn')(x)
    return nn.relu(x)


class CondInstHead(nn.Module):
  """Shared head over P3..P7: classes, IDs, boxes, centerness, controller."""
  num_classes: int
  num_ids: int
  strides: Sequence[int] = STRIDES
  channels: int = 256
  num_convs: int = 4
  num_id_convs: int = 1
  gn_groups: int = 32
  prior_prob: float = 0.01
  dtype: Any = jnp.float32

  def setup(self):
    tower = lambda n: [ConvGN(self.channels, self.gn_groups, self.dtype)
                       for _ in range(n)]
    self.cls_convs = tower(self.num_convs)
    self.id_convs = tower(self.num_id_convs)
    self.reg_convs = tower(self.num_convs)
    prior = -math.log((1 - self.prior_prob) / self.prior_prob)
    conv = lambda n, bias_init=nn.initializers.zeros: Conv3x3(
        n, kernel_init=_normal001, bias_init=bias_init, dtype=self.dtype)
    self.conv_cls = conv(self.num_classes, nn.initializers.constant(prior))
    self.conv_id = conv(self.num_ids, nn.initializers.constant(prior))
    self.conv_reg = conv(4)
    self.conv_centerness = conv(1)
    self.controller = conv(DYN_PARAMS)
    self.scales = self.param('scales', nn.initializers.ones,
                             (len(self.strides),))

  def __call__(self, feats: Sequence[jax.Array]):
    out = {k: [] for k in ('cls', 'id', 'reg', 'ctr', 'ctrl')}
    for level, x in enumerate(feats):
      cls_f, id_f, reg_f = x, x, x
      for m in self.cls_convs:
        cls_f = m(cls_f)
      for m in self.id_convs:
        id_f = m(id_f)
      for m in self.reg_convs:
        reg_f = m(reg_f)
      out['cls'].append(self.conv_cls(cls_f).astype(jnp.float32))
      out['id'].append(self.conv_id(id_f).astype(jnp.float32))
      reg = self.conv_reg(reg_f).astype(jnp.float32) * self.scales[level]
      out['reg'].append(nn.relu(reg) * self.strides[level])
      out['ctr'].append(self.conv_centerness(reg_f).astype(jnp.float32))
      out['ctrl'].append(self.controller(reg_f).astype(jnp.float32))
    return out


class StepBatchNorm(nn.Module):
  """BatchNorm over the clips of one time step, as torch's BatchNorm2d.

  In training ``x`` holds B clips x T frames, clip-major (clip b's frame t
  at b*T + t): each time step is normalised with its own batch statistics
  (mean and biased variance over the B frames and all pixels), and the
  running statistics take T updates in time order, with the unbiased
  variance - the authors run their head once per time step. At inference
  the running statistics. Variables as ``nn.BatchNorm``'s (params
  scale/bias, batch_stats mean/var).
  """
  momentum: float = 0.9  # flax convention: new = m * old + (1 - m) * batch
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, time_steps: int = 1):
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean',
                            lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var',
                           lambda: jnp.ones((c,), jnp.float32))
    if not train:
      mul = scale * jax.lax.rsqrt(ra_var.value + self.epsilon)
      add = bias - ra_mean.value * mul
      return x * mul.astype(self.dtype) + add.astype(self.dtype)
    f = x.shape[0]
    xt = x.astype(jnp.float32).reshape(f // time_steps, time_steps,
                                       *x.shape[1:])
    axes = (0,) + tuple(range(2, xt.ndim - 1))
    mean = jnp.mean(xt, axis=axes)  # (T, C)
    var = jnp.var(xt, axis=axes)
    shape = (1, time_steps) + (1,) * (xt.ndim - 3) + (c,)
    y = (xt - mean.reshape(shape)) * jax.lax.rsqrt(
        var.reshape(shape) + self.epsilon) * scale + bias
    if not self.is_initializing():
      n = xt.size // (time_steps * c)
      unbiased = var * (n / max(n - 1, 1))
      m, rm, rv = self.momentum, ra_mean.value, ra_var.value
      for t in range(time_steps):
        rm = m * rm + (1 - m) * jax.lax.stop_gradient(mean[t])
        rv = m * rv + (1 - m) * jax.lax.stop_gradient(unbiased[t])
      ra_mean.value, ra_var.value = rm, rv
    return y.reshape(x.shape).astype(self.dtype)


class MaskBranch(nn.Module):
  """F_mask (8 channels, stride ``out_stride``) from P3, P4, P5.

  BatchNorm here is trained (:class:`StepBatchNorm`): in training the
  statistics of each time step over the whole batch (also when it is
  sharded over devices), running statistics at inference. CondInst's
  branch works at stride 8; ``out_stride=4`` upsamples the summed P3..P5
  features x2 (aligned bilinear) before the tower, for small frames where a
  stride-8 grid is too coarse for the masks (same parameters). With
  ``upsample_before_tower=False`` the tower stays at stride 8 and only the
  8-channel F_mask is upsampled x2: the dynamic head (with its relative
  coordinates) still runs on the stride-4 grid, at a fraction of the cost.
  """
  channels: int = 128
  num_convs: int = 4
  momentum: float = 0.9
  out_stride: int = 8
  upsample_before_tower: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats: Sequence[jax.Array], train: bool = False,
               time_steps: int = 1):
    def conv_bn(x, name):
      x = Conv3x3(self.channels, use_bias=False, kernel_init=_torch_default,
                  dtype=self.dtype, name=f'{name}_conv')(x)
      x = StepBatchNorm(self.momentum, 1e-5, dtype=self.dtype,
                        name=f'{name}_bn')(x, train, time_steps)
      return nn.relu(x)

    x = None
    for i, f in enumerate(feats[:3]):
      y = conv_bn(f, f'refine_{i}')
      if x is None:
        x = y
      else:
        factor = x.shape[1] // y.shape[1]
        x = x + aligned_bilinear(y, factor)
    if self.out_stride not in (4, 8):
      raise ValueError(f'mask branch out_stride {self.out_stride}: 4 or 8')
    early = self.out_stride == 4 and self.upsample_before_tower
    if early:
      x = aligned_bilinear(x, 2)
    for i in range(self.num_convs):
      x = conv_bn(x, f'tower_{i}')
    x = Conv1x1(MASK_CHANNELS, kernel_init=_torch_default,
                bias_init=torch_default_bias(self.channels),
                dtype=self.dtype, name='tower_out')(x)
    if self.out_stride == 4 and not early:
      x = aligned_bilinear(x, 2)
    return x.astype(jnp.float32)


def mask_logits_at_stride4(logits: jax.Array, feat_stride: int = 8) -> jax.Array:
  """(K, h, w) mask logits at ``feat_stride`` -> stride 4 (the loss's grid).

  From stride 8, aligned-bilinear x2: stride-4 sample k reads stride-8
  position (k-1)/2. The loss compares it with the ground truth at pixel
  4k+2 (:func:`iai_jax.targets.mask_targets`). Stride-4 logits (a mask
  branch with ``out_stride`` 4) already sit on that grid.
  """
  if feat_stride not in (4, 8):
    raise ValueError(f'mask features at stride {feat_stride}: 4 or 8 expected')
  return aligned_bilinear(logits[..., None], feat_stride // 4)[..., 0]


def mask_logits_at_input(logits: jax.Array, feat_stride: int = 8) -> jax.Array:
  """(K, h, w) mask logits at ``feat_stride`` -> input resolution.

  The same chain as CondInst's: x2 to the loss's stride 4, then
  aligned-bilinear x4, which reads stride-4 sample k at pixel 4k+2 - where
  the loss put its ground truth. A single x8 from stride 8 would read
  stride-8 sample j at pixel 8j+4 instead of 8j+6 and shift every mask 2
  pixels up and left of what the model was trained to draw.
  """
  s4 = mask_logits_at_stride4(logits, feat_stride)
  return aligned_bilinear(s4[..., None], 4)[..., 0]


def split_dynamic_params(params: jax.Array):
  """(K, 169) -> [(w0 (K,8,10), b0 (K,8)), (w1, b1), (w2 (K,1,8), b2)]."""
  k = params.shape[0]
  sizes = list(DYN_WEIGHTS) + list(DYN_BIASES)
  parts = jnp.split(params, np.cumsum(sizes)[:-1], axis=1)
  ws, bs = parts[:3], parts[3:]
  ins = (DYN_IN, 8, 8)
  outs = (8, 8, 1)
  return [(w.reshape(k, o, i), b) for w, b, i, o in zip(ws, bs, ins, outs)]


def dynamic_mask_head(mask_feats, params, locations, strides,
                      feat_stride: int = 8):
  """Per-instance mask logits from the controller's dynamic parameters.

  Args:
    mask_feats: (h, w, 8) F_mask of one image (stride ``feat_stride``).
    params: (K, 169) controller outputs of K instances.
    locations: (K, 2) the instances' (x, y) locations in input pixels.
    strides: (K,) FPN stride of the level each instance came from.
  Returns:
    (K, h, w) mask logits at stride ``feat_stride``.

  The input of the first 1x1 conv is [rel_x, rel_y, F_mask] with
  rel = (instance location - pixel location) / (stride * 8).
  """
  h, w, _ = mask_feats.shape
  pix = jnp.asarray(grid_locations(h, w, feat_stride)).reshape(h, w, 2)
  rel = (locations[:, None, None, :] - pix[None]) / (
      strides.astype(jnp.float32)[:, None, None, None] * 8.0)
  k = params.shape[0]
  feats = jnp.broadcast_to(mask_feats[None].astype(jnp.float32),
                           (k, h, w, mask_feats.shape[-1]))
  x = jnp.concatenate([rel, feats], axis=-1)
  layers = split_dynamic_params(params.astype(jnp.float32))
  for n, (wt, b) in enumerate(layers):
    x = jnp.einsum('khwi,koi->khwo', x, wt) + b[:, None, None, :]
    if n < len(layers) - 1:
      x = nn.relu(x)
  return x[..., 0]
