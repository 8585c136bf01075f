"""Small building blocks shared by the IAI modules (all NHWC)."""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from iai_jax.models import inits, kernels


@functools.lru_cache(maxsize=64)
def aligned_bilinear_matrix(n: int, factor: int) -> np.ndarray:
  """(factor*n, n) matrix of CondInst's aligned bilinear upsampling on one axis.

  The operation: pad one replicate sample at the end, bilinear interpolation
  with align_corners=True to factor*n+1 samples (sample i sits at input
  position i/factor), pad factor//2 replicate samples at the start, keep the
  first factor*n.  Output sample i therefore reads the padded input at
  position max(i - factor//2, 0) / factor, and the padded sample n is sample
  n-1 again.
  """
  out = np.zeros((factor * n, n), np.float64)
  for i in range(factor * n):
    pos = max(i - factor // 2, 0) / factor
    lo = int(math.floor(pos))
    frac = pos - lo
    out[i, min(lo, n - 1)] += 1.0 - frac
    if frac > 0:
      out[i, min(lo + 1, n - 1)] += frac
  return out.astype(np.float32)


def aligned_bilinear(x: jax.Array, factor: int) -> jax.Array:
  """Upsample (B, H, W, C) by an integer ``factor`` as CondInst does."""
  if factor == 1:
    return x
  _, h, w, _ = x.shape
  rows = jnp.asarray(aligned_bilinear_matrix(h, factor), x.dtype)
  cols = jnp.asarray(aligned_bilinear_matrix(w, factor), x.dtype)
  x = jnp.einsum('ih,bhwc->biwc', rows, x)
  return jnp.einsum('jw,biwc->bijc', cols, x)


@functools.lru_cache(maxsize=64)
def sine_position_embedding(h: int, w: int, num_feats: int,
                            temperature: float = 10000.0,
                            scale: float = 2 * math.pi) -> np.ndarray:
  """(h, w, 2*num_feats) sine embedding: y features first, then x.

  Coordinates run 0..h-1 (0..w-1), are normalised by the last one and scaled
  by ``scale``; feature 2k is sin(c / t_k), feature 2k+1 is cos(c / t_k) with
  t_k = temperature ** (2k / num_feats).
  """
  eps = 1e-6
  y = np.arange(h, dtype=np.float64) / ((h - 1) + eps) * scale
  x = np.arange(w, dtype=np.float64) / ((w - 1) + eps) * scale
  dim_t = temperature ** (2 * (np.arange(num_feats) // 2) / num_feats)

  def embed(c):
    p = c[:, None] / dim_t[None, :]
    out = np.empty_like(p)
    out[:, 0::2] = np.sin(p[:, 0::2])
    out[:, 1::2] = np.cos(p[:, 1::2])
    return out

  ey, ex = embed(y), embed(x)
  pos = np.concatenate([np.broadcast_to(ey[:, None, :], (h, w, num_feats)),
                        np.broadcast_to(ex[None, :, :], (h, w, num_feats))],
                       axis=-1)
  return pos.astype(np.float32)


class Conv1x1(nn.Module):
  """A 1x1 convolution (optionally strided) as a matrix product.

  Same parameters as ``nn.Conv(features, (1, 1))`` (kernel (1, 1, in, out),
  bias (out,)). XLA on CPU runs the backward pass of a 1x1 convolution 2-4x
  slower than the same matrix product's.
  """
  features: int
  stride: int = 1
  use_bias: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros
  dtype: Any = jnp.float32
  size = 1  # kernel size (class attribute, not a field)

  def convolve(self, x, kernel):
    if self.stride > 1:
      x = x[..., ::self.stride, ::self.stride, :]
    return jnp.matmul(x.astype(self.dtype), kernel[0, 0].astype(self.dtype))

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', self.kernel_init,
                        (self.size, self.size, x.shape[-1], self.features),
                        jnp.float32)
    y = self.convolve(x, kernel)
    if self.use_bias:
      bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


def conv3x3(x: jax.Array, kernel: jax.Array, stride: int = 1,
            dtype: Any = jnp.float32) -> jax.Array:
  """3x3 convolution with symmetric padding 1, NHWC input, HWIO kernel.

  Large maps, and every map off CPU, go to XLA's convolution. On CPU small
  ones (the coarse FPN levels and the heads on them, ResNet's last stage at
  low resolution) are written as im2col + one matrix product: XLA on CPU
  runs a convolution of a few positions up to 10x slower than that (forward
  + backward of a 256-channel conv on a 2x3 map: 20 ms against 1.7 ms).
  """
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  h, w = x.shape[-3], x.shape[-2]
  oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1

  def xla(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), ((1, 1), (1, 1)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  def im2col(x, kernel):
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate(
        [xp[:, i:i + stride * (oh - 1) + 1:stride,
            j:j + stride * (ow - 1) + 1:stride, :]
         for i in range(3) for j in range(3)], axis=-1)
    # accumulate in float32 also for bf16 inputs (as XLA's convolution does)
    y = jnp.matmul(cols, kernel.reshape(-1, kernel.shape[-1]),
                   preferred_element_type=jnp.float32)
    return y.astype(dtype)

  if oh * ow >= kernels.SMALL_MAP:
    return xla(x, kernel)
  return kernels.select(im2col, xla, x, kernel)


def patch_conv(x, kernel, stride: int):
  """(B, H, W, C) -> (B, H', W', D): a ``kernel`` (k, k, C, D) convolution
  with ``stride`` and zero padding k // 2 (the ID bank's 33x33 stride 32).

  On CPU, where k == stride + 1 and H, W are multiples of the stride (every
  padded frame), XLA's strided convolution runs far below its matmul rate
  (a 384x640 ID mask: 157 ms). There it is four matrix products over the
  stride x stride blocks instead: the k-1 x k-1 top-left part of the kernel
  over block (i, j), its last row over the first row of block (i+1, j), its
  last column over the first column of block (i, j+1), its corner over the
  first pixel of block (i+1, j+1) (63 ms).
  """
  k, c = kernel.shape[0], x.shape[-1]
  pad = k // 2

  def xla(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  b, h, w, _ = x.shape
  if k != stride + 1 or h % stride or w % stride:
    return xla(x, kernel)

  def blocks(x, kernel):
    s, oh, ow = stride, h // stride, w // stride
    xp = jnp.pad(x, ((0, 0), (pad, s - pad), (pad, s - pad), (0, 0)))
    blk = xp.reshape(b, oh + 1, s, ow + 1, s, c)  # b, I, a, J, k, c
    out = jnp.einsum('biajkc,akcd->bijd', blk[:, :oh, :, :ow], kernel[:s, :s])
    out = out + jnp.einsum('bijkc,kcd->bijd', blk[:, 1:, 0, :ow],
                           kernel[s, :s])
    out = out + jnp.einsum('biajc,acd->bijd', blk[:, :oh, :, 1:, 0],
                           kernel[:s, s])
    return out + jnp.einsum('bijc,cd->bijd', blk[:, 1:, 0, 1:, 0],
                            kernel[s, s])

  return kernels.select(blocks, xla, x, kernel)


class Conv3x3(Conv1x1):
  """``nn.Conv(features, (3, 3), strides, padding 1)`` through :func:`conv3x3`
  (same parameters: kernel (3, 3, in, out), bias (out,))."""
  size = 3

  def convolve(self, x, kernel):
    return conv3x3(x, kernel, self.stride, self.dtype)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """3x3 max pool, stride 2, padding 1 (padded with -inf), NHWC.

  On CPU the maximum of the nine strided views: same values as
  ``nn.max_pool``, but its backward pass is nine selects instead of XLA's
  select-and-scatter, which on CPU took 60 ms for the stem output of 20
  frames of 96x160. Elsewhere ``nn.max_pool``.
  """
  def views(x):
    h, w = x.shape[-3], x.shape[-2]
    oh, ow = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    out = None
    for i in range(3):
      for j in range(3):
        v = xp[:, i:i + 2 * (oh - 1) + 1:2, j:j + 2 * (ow - 1) + 1:2, :]
        out = v if out is None else jnp.maximum(out, v)
    return out

  def xla(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

  return kernels.select(views, xla, x)


class DepthwiseConv(nn.Module):
  """k x k depthwise conv, 'same' padding, no bias, as shifted multiply-adds.

  Same parameter as ``nn.Conv(C, (k, k), feature_group_count=C)`` (kernel
  (k, k, 1, C)). Written out on CPU because XLA on CPU computes the kernel
  gradient of a grouped convolution as a dense C x C one (1024 x 1024 x 5 x
  5 in the FFN: most of the association block's backward time); elsewhere
  XLA's grouped convolution.
  """
  kernel_size: int = 5
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, c = self.kernel_size, x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (k, k, 1, c), jnp.float32)
    kernel = kernel.astype(self.dtype)
    x = x.astype(self.dtype)
    p = k // 2

    def xla(x, kernel):
      lead = x.shape[:-3]
      y = jax.lax.conv_general_dilated(
          x.reshape((-1,) + x.shape[-3:]), kernel, (1, 1), ((p, p), (p, p)),
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c)
      return y.reshape(lead + y.shape[1:])

    def shifted(x, kernel):
      h, w = x.shape[-3], x.shape[-2]
      xp = jnp.pad(x, ((0, 0),) * (x.ndim - 3) + ((p, p), (p, p), (0, 0)))
      out = jnp.zeros_like(x)
      for i in range(k):
        for j in range(k):
          out = out + xp[..., i:i + h, j:j + w, :] * kernel[i, j, 0]
      return out

    return kernels.select(shifted, xla, x, kernel)


class GCT(nn.Module):
  """Gated channel transformation (l2 mode) on a (B, H, W, C) map.

  Initialised as in the authors' LSTT: ``xavier_uniform_`` over every
  parameter of more than one dimension hits GCT's (1, C, 1, 1) alpha, gamma
  and beta too (U(+-sqrt(6 / (C + 1))), not GCT's own 1 / 0 / 0).
  """
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    init = inits.xavier_fans((1, c, 1, 1))
    alpha = self.param('alpha', init, (c,))
    gamma = self.param('gamma', init, (c,))
    beta = self.param('beta', init, (c,))
    xf = x.astype(jnp.float32)
    embedding = jnp.sqrt(jnp.sum(xf * xf, axis=(1, 2), keepdims=True)
                         + self.epsilon) * alpha
    norm = gamma / jnp.sqrt(jnp.mean(embedding * embedding, axis=-1,
                                     keepdims=True) + self.epsilon)
    gate = 1.0 + jnp.tanh(embedding * norm + beta)
    return (xf * gate).astype(x.dtype)


def drop_path(module: nn.Module, x: jax.Array, rate: float,
              deterministic: bool) -> jax.Array:
  """Stochastic depth on a (B, L, C) branch output, as the authors' DropPath.

  Their tensors are (L, B, C) and their mask (L, 1, 1): it drops sequence
  positions, the same positions for every sample of the batch. Kept values
  are scaled by 1 / (1 - rate).
  """
  if deterministic or rate == 0.0:
    return x
  keep = 1.0 - rate
  rng = module.make_rng('dropout')
  mask = jax.random.bernoulli(rng, keep, (1, x.shape[1]) + (1,) * (x.ndim - 2))
  return jnp.where(mask, x / keep, 0).astype(x.dtype)


@functools.lru_cache(maxsize=64)
def local_window_index(h: int, w: int, max_dis: int):
  """Index maps between a (h*w, h*w) attention matrix and 15x15 windows.

  Returns ``(offset_of, key_of)``:
    offset_of[i, j]: window offset index (dy+max_dis)*win + (dx+max_dis) of
      key j seen from query i, or -1 when j is outside i's window;
    key_of[i, o]: key position at offset o from query i, or -1 when that
      position lies outside the frame.
  """
  win = 2 * max_dis + 1
  ys, xs = np.divmod(np.arange(h * w), w)
  dy = ys[None, :] - ys[:, None]
  dx = xs[None, :] - xs[:, None]
  inside = (np.abs(dy) <= max_dis) & (np.abs(dx) <= max_dis)
  offset_of = np.where(inside, (dy + max_dis) * win + (dx + max_dis), -1)
  oy, ox = np.divmod(np.arange(win * win), win)
  ky = ys[:, None] + oy[None, :] - max_dis
  kx = xs[:, None] + ox[None, :] - max_dis
  valid = (ky >= 0) & (ky < h) & (kx >= 0) & (kx < w)
  key_of = np.where(valid, ky * w + kx, -1)
  return offset_of.astype(np.int32), key_of.astype(np.int32)


def masked_softmax(logits: jax.Array, valid: jax.Array) -> jax.Array:
  logits = jnp.where(valid, logits.astype(jnp.float32), -1e30)
  return jax.nn.softmax(logits, axis=-1)


def local_attention(q, k, v, rel_bias, value_bias, size_2d, max_dis):
  """Windowed (short-term) attention of the LSTT layer.

  Args:
    q, k, v: (B, h*w, heads, dh); ``q`` unscaled.
    rel_bias: (B, h*w, heads, win*win) query-dependent relative logits.
    value_bias: (heads, dh, win*win) learned per-offset value bias.
    size_2d: (h, w).
    max_dis: window radius (7 -> 15x15).

  Query i attends to the keys within max_dis rows and columns of it; keys
  outside the frame are masked.  Written as a dense banded attention over
  all h*w keys so that it is two matmuls plus static gathers.
  """
  h, w = size_2d
  dh = q.shape[-1]
  offset_of, key_of = local_window_index(h, w, max_dis)
  in_window = jnp.asarray(offset_of >= 0)
  logits = jnp.einsum('bqhc,bkhc->bhqk', q, k).astype(jnp.float32)
  logits = logits / math.sqrt(dh)
  rel = jnp.transpose(rel_bias, (0, 2, 1, 3)).astype(jnp.float32)  # b h q o
  idx = jnp.asarray(np.maximum(offset_of, 0))
  rel_dense = jnp.take_along_axis(
      rel, jnp.broadcast_to(idx, rel.shape[:2] + idx.shape), axis=-1)
  attn = masked_softmax(logits + rel_dense, in_window)
  out = jnp.einsum('bhqk,bkhc->bqhc', attn.astype(v.dtype), v)
  # value bias: weight of each window offset, gathered back from the matrix
  kidx = jnp.asarray(np.maximum(key_of, 0))
  attn_win = jnp.take_along_axis(
      attn, jnp.broadcast_to(kidx, attn.shape[:2] + kidx.shape), axis=-1)
  attn_win = jnp.where(jnp.asarray(key_of >= 0), attn_win, 0.0)
  out = out + jnp.einsum('bhqo,hco->bqhc', attn_win,
                         value_bias.astype(jnp.float32)).astype(out.dtype)
  return out


def global_attention(q, k, v, valid):
  """Plain multi-head attention with scaling 1/sqrt(dh) and a key mask.

  q: (B, Lq, heads, dh); k, v: (B, Lk, heads, dh); valid: (B, Lk) bool.
  """
  dh = q.shape[-1]
  logits = jnp.einsum('bqhc,bkhc->bhqk', q, k).astype(jnp.float32)
  logits = logits / math.sqrt(dh)
  attn = masked_softmax(logits, valid[:, None, None, :])
  return jnp.einsum('bhqk,bkhc->bqhc', attn.astype(v.dtype), v)
