"""Building blocks against hand-worked values and brute-force numpy."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iai_jax.models import layers as L


# ---------------------------------------------------------------- aligned bilinear
def test_aligned_bilinear_hand_values():
  # [0, 1], x2: pad -> [0, 1, 1]; align-corners samples at 0, .5, 1, 1.5, 2
  # -> [0, .5, 1, 1, 1]; pad one at the front -> [0, 0, .5, 1, 1, 1]; keep 4.
  x = jnp.asarray([0.0, 1.0]).reshape(1, 2, 1, 1)
  out = L.aligned_bilinear(x, 2)[0, :, 0, 0]
  np.testing.assert_allclose(out, [0, 0, 0.5, 1], atol=1e-6)
  # [0, 4], x4: samples at 0, .25, ..., 2 of [0, 4, 4] -> 0 1 2 3 4 4 4 4 4;
  # pad two at the front and keep 8 -> 0 0 0 1 2 3 4 4.
  x = jnp.asarray([0.0, 4.0]).reshape(1, 1, 2, 1)
  out = L.aligned_bilinear(x, 4)[0, 0, :, 0]
  np.testing.assert_allclose(out, [0, 0, 0, 1, 2, 3, 4, 4], atol=1e-6)


def _torch_style_aligned_bilinear_1d(v, f):
  """The recipe step by step: replicate pad, align-corners resize, pad, crop."""
  n = len(v)
  padded = np.concatenate([v, v[-1:]])
  out_len = f * n + 1
  pos = np.arange(out_len) * (len(padded) - 1) / (out_len - 1)
  resized = np.interp(pos, np.arange(len(padded)), padded)
  resized = np.concatenate([np.repeat(resized[:1], f // 2), resized])
  return resized[:f * n]


@pytest.mark.parametrize('factor', [2, 4, 8])
def test_aligned_bilinear_matches_recipe_2d(factor):
  rng = np.random.default_rng(factor)
  x = rng.normal(size=(3, 5)).astype(np.float32)
  rows = np.stack([_torch_style_aligned_bilinear_1d(r, factor) for r in x])
  ref = np.stack([_torch_style_aligned_bilinear_1d(c, factor)
                  for c in rows.T]).T
  out = L.aligned_bilinear(jnp.asarray(x)[None, :, :, None], factor)
  np.testing.assert_allclose(out[0, :, :, 0], ref, atol=1e-5)


# ---------------------------------------------------------------- position
def test_sine_position_embedding_hand_values():
  pos = L.sine_position_embedding(2, 3, 4)
  assert pos.shape == (2, 3, 8)
  two_pi = 2 * math.pi
  # y = 1 -> 2*pi (normalised by the last row); t = [1, 1, 100, 100]
  np.testing.assert_allclose(
      pos[1, 0, :4], [math.sin(two_pi), math.cos(two_pi),
                      math.sin(two_pi / 100), math.cos(two_pi / 100)],
      atol=1e-5)
  # x = 1 of 0..2 -> pi
  np.testing.assert_allclose(
      pos[0, 1, 4:], [0.0, -1.0, math.sin(math.pi / 100),
                      math.cos(math.pi / 100)], atol=1e-5)
  # origin: sin 0 = 0, cos 0 = 1 for every frequency
  np.testing.assert_allclose(pos[0, 0], [0, 1, 0, 1, 0, 1, 0, 1], atol=1e-6)


# ---------------------------------------------------------------- GCT
def test_gct_matches_formula():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 4, 5, 6)).astype(np.float32)
  alpha, gamma, beta = (rng.normal(size=6).astype(np.float32) for _ in range(3))
  params = {'params': {'alpha': alpha, 'gamma': gamma, 'beta': beta}}
  out = L.GCT().apply(params, jnp.asarray(x))
  eps = 1e-5
  ref = np.empty_like(x)
  for b in range(2):
    emb = np.sqrt((x[b] ** 2).sum(axis=(0, 1)) + eps) * alpha
    norm = gamma / np.sqrt((emb ** 2).mean() + eps)
    ref[b] = x[b] * (1 + np.tanh(emb * norm + beta))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  # initialised as the authors' LSTT does (xavier_uniform over the torch
  # shape (1, C, 1, 1): bound sqrt(6 / (C + 1))), not GCT's own 1 / 0 / 0
  c = 1024
  init = L.GCT().init(jax.random.key(0), jnp.zeros((1, 2, 2, c)))['params']
  bound = np.sqrt(6.0 / (c + 1))
  for name in ('alpha', 'gamma', 'beta'):
    v = np.asarray(init[name])
    assert np.abs(v).max() <= bound and np.abs(v).max() > 0.9 * bound
    np.testing.assert_allclose(v.std(), bound / np.sqrt(3), rtol=0.1)
  assert not np.allclose(init['alpha'], init['gamma'])


# ---------------------------------------------------------------- attention
def _brute_local_attention(q, k, v, rel, vbias, h, w, r):
  """Loop over every query and every window offset (numpy, float64)."""
  b, _, heads, dh = q.shape
  win = 2 * r + 1
  out = np.zeros(q.shape, np.float64)
  for bi in range(b):
    for hd in range(heads):
      for qy in range(h):
        for qx in range(w):
          i = qy * w + qx
          logits, vals = [], []
          for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
              ky, kx = qy + dy, qx + dx
              if not (0 <= ky < h and 0 <= kx < w):
                continue
              o = (dy + r) * win + (dx + r)
              j = ky * w + kx
              logits.append(q[bi, i, hd] @ k[bi, j, hd] / math.sqrt(dh)
                            + rel[bi, i, hd, o])
              vals.append(v[bi, j, hd] + vbias[hd, :, o])
          logits = np.asarray(logits)
          p = np.exp(logits - logits.max())
          p /= p.sum()
          out[bi, i, hd] = p @ np.asarray(vals)
  return out


@pytest.mark.parametrize('h,w,r', [(5, 6, 2), (4, 9, 7), (1, 3, 1)])
def test_local_attention_matches_window_loop(h, w, r):
  rng = np.random.default_rng(h * 100 + w)
  b, heads, dh = 2, 2, 3
  win = (2 * r + 1) ** 2
  q, k, v = (rng.normal(size=(b, h * w, heads, dh)) for _ in range(3))
  rel = rng.normal(size=(b, h * w, heads, win))
  vbias = rng.normal(size=(heads, dh, win))
  out = L.local_attention(*(jnp.asarray(a, jnp.float32)
                            for a in (q, k, v, rel, vbias)), (h, w), r)
  ref = _brute_local_attention(q, k, v, rel, vbias, h, w, r)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_global_attention_ignores_invalid_keys():
  rng = np.random.default_rng(1)
  q = rng.normal(size=(1, 4, 2, 3))
  k = rng.normal(size=(1, 6, 2, 3))
  v = rng.normal(size=(1, 6, 2, 3))
  valid = np.array([[True, False, True, True, False, True]])
  out = L.global_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                           jnp.asarray(valid))
  keep = valid[0]
  logits = np.einsum('qhc,khc->hqk', q[0], k[0, keep]) / math.sqrt(3)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  ref = np.einsum('hqk,khc->qhc', p, v[0, keep])
  np.testing.assert_allclose(out[0], ref, rtol=1e-5, atol=1e-6)
  # garbage in the invalid keys changes nothing
  k2, v2 = k.copy(), v.copy()
  k2[0, ~keep] = 1e3
  v2[0, ~keep] = -1e3
  out2 = L.global_attention(jnp.asarray(q), jnp.asarray(k2), jnp.asarray(v2),
                            jnp.asarray(valid))
  np.testing.assert_allclose(out2, out, atol=1e-6)


class _Drop(nn.Module):
  rate: float

  @nn.compact
  def __call__(self, x, deterministic):
    return L.drop_path(self, x, self.rate, deterministic)


def test_drop_path_drops_sequence_positions_for_every_sample():
  """The authors' DropPath draws its mask over the first axis of their (L, B,
  C) tensors: a position is dropped for all samples, or kept (x 1/keep)."""
  x = jnp.ones((3, 64, 4))  # (B, L, C)
  out = np.asarray(_Drop(0.5).apply({}, x, False,
                                    rngs={'dropout': jax.random.key(3)}))
  assert set(np.unique(out)) <= {0.0, 2.0}
  # the same positions in every sample, all channels alike
  np.testing.assert_array_equal(out[0], out[1])
  np.testing.assert_array_equal(out[0], out[2])
  assert (out.min(-1) == out.max(-1)).all()
  assert 0 < (out[0, :, 0] == 0).sum() < 64
  np.testing.assert_array_equal(_Drop(0.5).apply({}, x, True), x)


# ---------------------------------------------------------------- 3x3 conv
@pytest.mark.parametrize('h,w,stride', [(2, 3, 1), (5, 7, 2), (6, 10, 1),
                                        (12, 20, 1), (13, 21, 2), (24, 40, 2)])
def test_conv3x3_matches_numpy_on_small_and_large_maps(h, w, stride):
  """Both paths (im2col below SMALL_MAP output positions, XLA's conv above)
  against a numpy loop with torch's symmetric padding 1."""
  rng = np.random.default_rng(h * w + stride)
  x = rng.normal(size=(2, h, w, 5)).astype(np.float32)
  k = rng.normal(size=(3, 3, 5, 4)).astype(np.float32)
  oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  ref = np.zeros((2, oh, ow, 4))
  for i in range(oh):
    for j in range(ow):
      patch = xp[:, i * stride:i * stride + 3, j * stride:j * stride + 3]
      ref[:, i, j] = np.einsum('bhwc,hwco->bo', patch, k)
  out = L.conv3x3(jnp.asarray(x), jnp.asarray(k), stride)
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
  # same parameters and numbers as flax's conv with explicit padding
  conv = L.Conv3x3(4, stride=stride)
  v = conv.init(jax.random.key(0), jnp.asarray(x))
  flax_conv = nn.Conv(4, (3, 3), strides=(stride, stride),
                      padding=((1, 1), (1, 1)))
  np.testing.assert_allclose(conv.apply(v, jnp.asarray(x)),
                             flax_conv.apply(v, jnp.asarray(x)),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('h, w', [(7, 10), (8, 9)])
def test_max_pool_3x3_s2_matches_numpy_values_and_gradient(h, w):
  """Values: the max of each 3x3 window (stride 2, out-of-picture samples
  ignored), by a plain loop. Gradient of sum(pool(x) * g): each window's g
  lands on its argmax (distinct random values, so no ties)."""
  rng = np.random.default_rng(3)
  x = rng.permutation(2 * h * w * 3).reshape(2, h, w, 3).astype(np.float32)
  oh, ow = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  g = rng.normal(size=(2, oh, ow, 3)).astype(np.float32)
  ref = np.zeros((2, oh, ow, 3), np.float32)
  grad = np.zeros_like(x)
  for b in range(2):
    for c in range(3):
      for i in range(oh):
        for j in range(ow):
          r0, c0 = max(2 * i - 1, 0), max(2 * j - 1, 0)
          win = x[b, r0:2 * i + 2, c0:2 * j + 2, c]
          ref[b, i, j, c] = win.max()
          di, dj = np.unravel_index(win.argmax(), win.shape)
          grad[b, r0 + di, c0 + dj, c] += g[b, i, j, c]
  np.testing.assert_array_equal(L.max_pool_3x3_s2(jnp.asarray(x)), ref)
  got = jax.grad(lambda v: jnp.sum(L.max_pool_3x3_s2(v) * g))(jnp.asarray(x))
  np.testing.assert_allclose(got, grad, atol=1e-6)


# ---------------------------------------------------------------- backends
def test_cpu_and_generic_kernels_give_the_same_numbers():
  """kernels.cpu_paths() picks the CPU implementations (im2col 3x3 on small
  maps, shifted-sum depthwise conv, nine-view max pool, block-matmul ID
  bank conv); the generic ones
  (XLA's ops, used on GPU/TPU) give the same values and gradients."""
  from iai_jax.models import kernels
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.normal(size=(2, 6, 10, 16)), jnp.float32)
  k3 = jnp.asarray(rng.normal(size=(3, 3, 16, 8)), jnp.float32)
  dw = L.DepthwiseConv(5)
  dw_vars = dw.init(jax.random.key(1), x)
  # the ID bank's patch conv: a one-hot 64x96 mask, 33x33 stride 32
  ids = jnp.asarray(np.eye(5, dtype=np.float32)[rng.integers(0, 5, (2, 64, 96))])
  k33 = jnp.asarray(rng.normal(size=(33, 33, 5, 4)) / 33, jnp.float32)

  def ops(x, k3, dwk, k33):
    a = L.conv3x3(x, k3)                       # 60 positions: im2col on CPU
    b = dw.apply({'params': {'kernel': dwk}}, x)
    c = L.max_pool_3x3_s2(x)
    d = L.patch_conv(ids, k33, 32)             # 4 matmuls over blocks on CPU
    return a, b, c, d

  def loss(x, k3, dwk, k33):
    a, b, c, d = ops(x, k3, dwk, k33)
    return (jnp.sum(a ** 2) + jnp.sum(b * x) + jnp.sum(c ** 3)
            + jnp.sum(d ** 2))

  results = {}
  traced = []
  for kind in ('cpu', 'generic'):
    with kernels.forced(kind):
      assert kernels.cpu_paths() == (kind == 'cpu')
      assert kernels.scan_unroll('auto') == (True if kind == 'cpu' else 1)
      # a new function object per kind: jit caches traces by function, and
      # the kernel choice is made while tracing
      out = jax.jit(lambda *a: (traced.append(kind), ops(*a))[1])(
          x, k3, dw_vars['params']['kernel'], k33)
      grads = jax.jit(jax.grad(lambda *a: loss(*a), argnums=(0, 1, 2, 3)))(
          x, k3, dw_vars['params']['kernel'], k33)
    results[kind] = (out, grads)
  assert traced == ['cpu', 'generic']
  for a, b in zip(jax.tree_util.tree_leaves(results['cpu']),
                  jax.tree_util.tree_leaves(results['generic'])):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
  assert kernels.scan_unroll(3) == 3
  with pytest.raises(ValueError, match='cpu or generic'):
    with kernels.forced('gpu'):
      pass


def test_multi_platform_export_runs_each_platforms_kernels():
  """Traced for cpu and cuda at once (kernels.for_platforms), the ops carry
  both implementations behind lax.platform_dependent: on CPU the exported
  program gives the CPU paths' numbers, and the cuda program holds XLA's
  grouped convolution and reduce_window (the generic paths)."""
  from jax import export
  from iai_jax.models import kernels
  rng = np.random.default_rng(8)
  x = jnp.asarray(rng.normal(size=(1, 6, 10, 16)), jnp.float32)
  k3 = jnp.asarray(rng.normal(size=(3, 3, 16, 8)), jnp.float32)
  dwk = jnp.asarray(rng.normal(size=(5, 5, 1, 16)), jnp.float32)
  dw = L.DepthwiseConv(5)

  def ops(x, k3, dwk):
    return (L.conv3x3(x, k3), dw.apply({'params': {'kernel': dwk}}, x),
            L.max_pool_3x3_s2(x))

  with kernels.forced('cpu'):
    want = jax.jit(ops)(x, k3, dwk)
  for platforms, kind in ((('cpu',), 'cpu'), (('cuda',), 'generic'),
                          (('cpu', 'cuda'), kernels.PER_PLATFORM)):
    with kernels.for_platforms(platforms) as chosen:
      assert chosen == kind
      exp = export.export(jax.jit(lambda *a: ops(*a)),  # a fresh trace
                          platforms=platforms)(x, k3, dwk)
    text = exp.mlir_module()
    generic = 'feature_group_count = 16' in text and 'reduce_window' in text
    assert generic == (kind != 'cpu'), kind
    if 'cpu' in platforms:
      got = export.deserialize(exp.serialize()).call(x, k3, dwk)
      for a, b in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not kernels.per_platform()
