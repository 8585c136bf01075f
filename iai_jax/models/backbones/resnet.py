"""ResNet-18/34/50/101 backbone ("pytorch style") returning C3, C4, C5.

The backbone ``resnet`` of :mod:`iai_jax.models.backbones` (config keys
``model.backbone.depth``, ``width``, ``frozen_stages``). As mmdet's ResNet
with ``norm_eval=True, frozen_stages=1`` in the authors' config: every
BatchNorm normalises with its running statistics (the ``batch_stats``
collection, never updated); the stem and stages up to ``frozen_stages`` are
frozen altogether, the later stages' BatchNorm affine scale and bias are
trained (:func:`is_frozen`). Random initialisation as mmdet's: kaiming
normal (fan out) convolutions, BatchNorm 1/0 and ``zero_init_residual``
(the last BatchNorm of every residual branch starts at scale 0).  Padding is explicit
and symmetric as in torch, so converted weights give the same features.
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from iai_jax.models.layers import Conv1x1, Conv3x3, max_pool_3x3_s2

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3),
                101: (3, 4, 23, 3)}

_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _conv(features, kernel, stride, name, dtype):
  if kernel == 1:
    return Conv1x1(features, stride, use_bias=False, kernel_init=_conv_init,
                   dtype=dtype, name=name)
  if kernel == 3:
    return Conv3x3(features, stride, use_bias=False, kernel_init=_conv_init,
                   dtype=dtype, name=name)
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False,
                 kernel_init=_conv_init, dtype=dtype, name=name)


class FrozenBatchNorm(nn.Module):
  """BatchNorm on its running statistics (mmdet's ``norm_eval``).

  Same variables as ``nn.BatchNorm`` (params scale/bias, batch_stats
  mean/var), folded into one multiply-add. The statistics never change; the
  affine scale and bias are trained when ``trainable`` (stages after the
  frozen ones, as the authors' ``requires_grad=True``), else no gradient is
  computed for them at all (saves a reduction over every activation).
  ``zero_scale``: initial scale 0 (the last BN of a residual branch,
  ``zero_init_residual``).
  """
  epsilon: float = 1e-5
  trainable: bool = False
  zero_scale: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    init = nn.initializers.zeros if self.zero_scale else nn.initializers.ones
    scale = self.param('scale', init, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    mean = self.variable('batch_stats', 'mean',
                         lambda: jnp.zeros((c,), jnp.float32))
    var = self.variable('batch_stats', 'var',
                        lambda: jnp.ones((c,), jnp.float32))
    if not self.trainable:
      scale, bias = jax.lax.stop_gradient(scale), jax.lax.stop_gradient(bias)
    inv = jax.lax.rsqrt(var.value + self.epsilon)
    mul = scale * inv
    add = bias - mean.value * mul
    return x * mul.astype(self.dtype) + add.astype(self.dtype)


class Bottleneck(nn.Module):
  planes: int
  stride: int
  downsample: bool
  dtype: Any = jnp.float32
  train_bn: bool = False  # train the BN affine (a stage after the frozen ones)
  expansion = 4

  def bn(self, name, last=False):
    return FrozenBatchNorm(trainable=self.train_bn, zero_scale=last,
                           dtype=self.dtype, name=name)

  @nn.compact
  def __call__(self, x):
    out = nn.relu(self.bn('bn1')(
        _conv(self.planes, 1, 1, 'conv1', self.dtype)(x)))
    out = nn.relu(self.bn('bn2')(
        _conv(self.planes, 3, self.stride, 'conv2', self.dtype)(out)))
    out = self.bn('bn3', last=True)(
        _conv(self.planes * 4, 1, 1, 'conv3', self.dtype)(out))
    if self.downsample:
      x = self.bn('downsample_bn')(
          _conv(self.planes * 4, 1, self.stride, 'downsample_conv',
                self.dtype)(x))
    return nn.relu(out + x)


class BasicBlock(Bottleneck):
  expansion = 1

  @nn.compact
  def __call__(self, x):
    out = nn.relu(self.bn('bn1')(
        _conv(self.planes, 3, self.stride, 'conv1', self.dtype)(x)))
    out = self.bn('bn2', last=True)(
        _conv(self.planes, 3, 1, 'conv2', self.dtype)(out))
    if self.downsample:
      x = self.bn('downsample_bn')(
          _conv(self.planes, 1, self.stride, 'downsample_conv',
                self.dtype)(x))
    return nn.relu(out + x)


class ResNet(nn.Module):
  """Returns {'c3', 'c4', 'c5'} (strides 8, 16, 32)."""
  depth: int = 50
  width: int = 64
  dtype: Any = jnp.float32
  # Stem (0) and stages 1..frozen_stages get no gradient at all: nothing
  # before them is trained, so their backward pass would be wasted work.
  frozen_stages: int = -1

  @nn.compact
  def __call__(self, x):
    block = BasicBlock if self.depth in (18, 34) else Bottleneck
    x = x.astype(self.dtype)
    x = _conv(self.width, 7, 2, 'conv1', self.dtype)(x)
    x = nn.relu(FrozenBatchNorm(trainable=self.frozen_stages < 0,
                                dtype=self.dtype, name='bn1')(x))
    x = max_pool_3x3_s2(x)
    if self.frozen_stages >= 0:
      x = jax.lax.stop_gradient(x)
    outs = {}
    in_ch = self.width
    for stage, n_blocks in enumerate(STAGE_BLOCKS[self.depth]):
      planes = self.width * 2 ** stage
      for b in range(n_blocks):
        stride = 2 if (b == 0 and stage > 0) else 1
        down = b == 0 and (stride != 1 or in_ch != planes * block.expansion)
        x = block(planes, stride, down, dtype=self.dtype,
                  train_bn=stage + 1 > self.frozen_stages,
                  name=f'layer{stage + 1}_{b}')(x)
        in_ch = planes * block.expansion
      if stage + 1 <= self.frozen_stages:
        x = jax.lax.stop_gradient(x)
      if stage >= 1:
        outs[f'c{stage + 2}'] = x
    return outs


# ----------------------------------------------------------------- interface
# (see iai_jax.models.backbones)
DEPTHS = tuple(STAGE_BLOCKS)


def check(cfg) -> None:
  if cfg.depth not in DEPTHS:
    raise ValueError(f'model.backbone.depth={cfg.depth}: supported depths are '
                     + ', '.join(map(str, DEPTHS)))
  if cfg.width < 1:
    raise ValueError(f'model.backbone.width={cfg.width} must be >= 1')
  if not -1 <= cfg.frozen_stages <= 4:
    raise ValueError(f'model.backbone.frozen_stages={cfg.frozen_stages}: '
                     'use -1 (nothing frozen) .. 4')


def build(cfg, dtype) -> ResNet:
  return ResNet(cfg.depth, cfg.width, dtype=dtype,
                frozen_stages=cfg.frozen_stages)


def channels(cfg) -> dict[str, int]:
  expansion = 1 if cfg.depth in (18, 34) else 4
  return {f'c{s + 2}': cfg.width * 2 ** s * expansion for s in (1, 2, 3)}


def is_frozen(path: tuple[str, ...], cfg) -> bool:
  """Path relative to the backbone's parameters: the stem and stages
  1..frozen_stages are frozen (convolutions and BatchNorm affine); the
  later stages are trained, their BatchNorm affine included (the running
  statistics are never updated)."""
  top = path[0]
  if top in ('conv1', 'bn1'):
    return cfg.frozen_stages >= 0
  stage = int(top[len('layer'):].split('_')[0])
  return stage <= cfg.frozen_stages


def torch_module(path: tuple[str, ...]) -> str:
  """Our module path -> torchvision / mmdet ResNet module name."""
  top = path[0]
  m = re.fullmatch(r'layer(\d+)_(\d+)', top)
  if m is None:
    return top  # conv1, bn1
  sub = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}
  return f'layer{m[1]}.{m[2]}.{sub.get(path[1], path[1])}'
