"""FPN, CondInst head, mask branch and the dynamic mask head."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from iai_jax.models import condinst as C
from iai_jax.models import locations


def _conv_nhwc(x, kernel, bias, stride=1):
  """Explicit numpy conv with symmetric 'same' padding, for references."""
  kh, kw, cin, cout = kernel.shape
  ph, pw = kh // 2, kw // 2
  xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  b, h, w, _ = x.shape
  oh, ow = (h + 2 * ph - kh) // stride + 1, (w + 2 * pw - kw) // stride + 1
  out = np.zeros((b, oh, ow, cout))
  for i in range(oh):
    for j in range(ow):
      patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw]
      out[:, i, j] = np.einsum('bhwc,hwco->bo', patch, kernel)
  return out + (0 if bias is None else bias)


def test_dynamic_mask_head_matches_per_instance_numpy():
  rng = np.random.default_rng(0)
  h, w = 6, 7
  feats = rng.normal(size=(h, w, 8)).astype(np.float32)
  k = 3
  params = rng.normal(size=(k, 169)).astype(np.float32) * 0.5
  locs = np.array([[4.0, 4.0], [28.0, 12.0], [52.0, 44.0]], np.float32)
  strides = np.array([8, 16, 32], np.int32)
  out = C.dynamic_mask_head(jnp.asarray(feats), jnp.asarray(params),
                            jnp.asarray(locs), jnp.asarray(strides))
  assert out.shape == (k, h, w)
  for n in range(k):
    p = params[n]
    w0, w1, w2 = p[:80].reshape(8, 10), p[80:144].reshape(8, 8), p[144:152].reshape(1, 8)
    b0, b1, b2 = p[152:160], p[160:168], p[168:169]
    for y in range(h):
      for x in range(w):
        px, py = x * 8 + 4, y * 8 + 4
        rel = np.array([(locs[n, 0] - px), (locs[n, 1] - py)]) / (strides[n] * 8)
        z = np.concatenate([rel, feats[y, x]])
        z = np.maximum(w0 @ z + b0, 0)
        z = np.maximum(w1 @ z + b1, 0)
        z = w2 @ z + b2
        np.testing.assert_allclose(out[n, y, x], z[0], rtol=1e-4, atol=1e-4)


def test_fpn_top_down_and_extra_levels():
  rng = np.random.default_rng(1)
  feats = [jnp.asarray(rng.normal(size=(1, 8 // s, 8 // s, c)), jnp.float32)
           for s, c in ((1, 4), (2, 6), (4, 5))]
  fpn = C.FPN(channels=3)
  v = fpn.init(jax.random.key(0), feats)
  outs = fpn.apply(v, feats)
  assert [o.shape[1] for o in outs] == [8, 4, 2, 1, 1]
  p = jax.tree_util.tree_map(np.asarray, v['params'])
  lat = [np.einsum('bhwc,co->bhwo', np.asarray(f),
                   p[f'lateral_{i}']['kernel'][0, 0]) + p[f'lateral_{i}']['bias']
         for i, f in enumerate(feats)]
  up = lambda a: a.repeat(2, axis=1).repeat(2, axis=2)
  lat[1] = lat[1] + up(lat[2])
  lat[0] = lat[0] + up(lat[1])
  for i in range(3):
    ref = _conv_nhwc(lat[i], p[f'output_{i}']['kernel'], p[f'output_{i}']['bias'])
    np.testing.assert_allclose(outs[i], ref, rtol=1e-4, atol=1e-4)
  # P6 from the P5 output itself (no ReLU: mmdet applies it only before the
  # second extra conv), P7 from ReLU(P6)
  assert (np.asarray(outs[2]) < 0).any()  # a ReLU would change P6
  p6 = _conv_nhwc(np.asarray(outs[2]), p['output_3']['kernel'],
                  p['output_3']['bias'], stride=2)
  np.testing.assert_allclose(outs[3], p6, rtol=1e-4, atol=1e-4)
  assert (p6 < 0).any()
  p7 = _conv_nhwc(np.maximum(p6, 0), p['output_4']['kernel'],
                  p['output_4']['bias'], stride=2)
  np.testing.assert_allclose(outs[4], p7, rtol=1e-4, atol=1e-4)


def test_head_prior_and_box_scaling():
  rng = np.random.default_rng(2)
  feats = [jnp.asarray(rng.normal(size=(1, s, s, 32)), jnp.float32)
           for s in (8, 4, 2, 1, 1)]
  head = C.CondInstHead(num_classes=5, num_ids=7, channels=32, gn_groups=8)
  v = head.init(jax.random.key(0), feats)
  out = head.apply(v, feats)
  # classifier and ID logits start at the 0.01 prior (tiny 0.01-std weights)
  for key, n in (('cls', 5), ('id', 7)):
    probs = jax.nn.sigmoid(jnp.concatenate([o.reshape(-1, n) for o in out[key]]))
    np.testing.assert_allclose(probs.mean(), 0.01, atol=2e-3)
  assert out['ctrl'][0].shape[-1] == 169
  # regression = ReLU(scale_l * conv) * stride_l
  params = jax.tree_util.tree_map(lambda x: x, v['params'])
  params['scales'] = jnp.asarray([2.0, 1.0, 1.0, 1.0, -1.0])
  out2 = head.apply({'params': params}, feats)
  raw0 = out['reg'][0] / 8.0  # ReLU(conv) at scale 1
  pos = np.asarray(raw0) > 0
  np.testing.assert_allclose(np.asarray(out2['reg'][0])[pos],
                             2 * np.asarray(out['reg'][0])[pos], rtol=1e-5)
  # a negative scale flips the sign before the ReLU: never both positive
  a, b = np.asarray(out['reg'][4]), np.asarray(out2['reg'][4])
  assert not ((a > 0) & (b > 0)).any() and ((a > 0) | (b > 0)).any()


def test_mask_branch_batchnorm_train_vs_eval():
  rng = np.random.default_rng(3)
  feats = [jnp.asarray(rng.normal(size=(2, s, s, 16)) * 3 + 1, jnp.float32)
           for s in (8, 4, 2)]
  mb = C.MaskBranch(channels=8, num_convs=2)
  v = mb.init(jax.random.key(0), feats)
  assert mb.apply(v, feats).shape == (2, 8, 8, 8)
  out, upd = mb.apply(v, feats, train=True, mutable=['batch_stats'])
  # running statistics move towards the batch statistics
  before = v['batch_stats']['refine_0_bn']['mean']
  after = upd['batch_stats']['refine_0_bn']['mean']
  assert not np.allclose(before, after)
  # in training the result for sample 0 depends on sample 1; in eval it doesn't
  eval0 = mb.apply(v, [f[:1] for f in feats])
  np.testing.assert_allclose(mb.apply(v, feats)[:1], eval0, rtol=1e-5, atol=1e-5)
  train0, _ = mb.apply(v, [f[:1] for f in feats], train=True,
                       mutable=['batch_stats'])
  assert not np.allclose(out[:1], train0, atol=1e-3)


def test_grid_locations_are_pixel_centres():
  loc = locations.grid_locations(2, 3, 8)
  np.testing.assert_array_equal(loc, [[4, 4], [12, 4], [20, 4],
                                      [4, 12], [12, 12], [20, 12]])


def test_output_masks_sit_where_the_loss_put_the_ground_truth():
  """The inference upsampling reads the loss's stride-4 grid at its pixels.

  The loss compares the x2-upsampled logits with the ground truth at pixels
  4k+2 (targets.mask_targets). At those pixels the full-resolution logits
  must equal the loss's stride-4 logits exactly; a single aligned x8 from
  stride 8 does not (it reads stride-8 sample j at pixel 8j+4, 2 px off).
  """
  from iai_jax.models.layers import aligned_bilinear
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(2, 5, 7)).astype(np.float32))
  s4 = np.asarray(C.mask_logits_at_stride4(logits))
  full = np.asarray(C.mask_logits_at_input(logits))
  assert s4.shape == (2, 10, 14) and full.shape == (2, 40, 56)
  np.testing.assert_allclose(full[:, 2::4, 2::4], s4, atol=1e-6)
  direct = np.asarray(aligned_bilinear(logits[..., None], 8)[..., 0])
  assert np.abs(direct[:, 2::4, 2::4] - s4).max() > 0.1  # the old, shifted chain

  # Masks that a perfect model reproduces on the loss's grid come back in
  # place: over 20 random discs, the predicted masks' centroids are off by
  # < 0.5 px on average (the old chain: 2 px up and left).
  from iai_jax import targets as T
  up2 = np.asarray(C.mask_logits_at_stride4(jnp.eye(48).reshape(48, 6, 8)))
  a = up2.reshape(48, -1).T  # (12*16, 48): stride-8 logits -> stride 4
  yy, xx = np.mgrid[:48, :64]
  new_off, old_off = [], []
  for _ in range(20):
    cy, cx, r = rng.uniform(16, 32), rng.uniform(16, 48), rng.uniform(9, 14)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    t = np.asarray(T.mask_targets(jnp.asarray(disc[None])))[0]  # (12, 16)
    l8 = np.linalg.lstsq(a, (t * 2 - 1).ravel() * 8, rcond=None)[0]
    l8 = jnp.asarray(l8.reshape(1, 6, 8), jnp.float32)
    centroid = lambda m: np.array([yy[m].mean(), xx[m].mean()])
    new = np.asarray(C.mask_logits_at_input(l8))[0] > 0
    old = np.asarray(aligned_bilinear(l8[..., None], 8))[0, ..., 0] > 0
    new_off.append(centroid(new) - centroid(disc))
    old_off.append(centroid(old) - centroid(disc))
  assert np.all(np.abs(np.mean(new_off, 0)) < 0.5), np.mean(new_off, 0)
  np.testing.assert_allclose(np.mean(old_off, 0), [-2, -2], atol=0.5)


def _group_norm_np(x, groups, scale, bias, eps=1e-5):
  b, h, w, c = x.shape
  xg = x.reshape(b, h, w, groups, c // groups)
  mean = xg.mean(axis=(1, 2, 4), keepdims=True)
  var = xg.var(axis=(1, 2, 4), keepdims=True)
  return ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def test_head_towers_and_predictors_match_numpy_unit_by_unit():
  """Every head output against numpy convs, GroupNorms and ReLUs, on levels
  from 6x7 down to 1x2 (both paths of layers.conv3x3), parameters
  randomised so nothing cancels, an ID tower deeper than the others."""
  rng = np.random.default_rng(4)
  feats = [jnp.asarray(rng.normal(size=(2, s, s + 1, 16)), jnp.float32)
           for s in (6, 3, 2, 1, 1)]
  head = C.CondInstHead(num_classes=3, num_ids=5, channels=16, num_convs=2,
                        num_id_convs=3, gn_groups=4)
  v = head.init(jax.random.key(0), feats)
  params = jax.tree_util.tree_map(
      lambda x: np.asarray(rng.normal(size=x.shape) * 0.3, np.float32),
      v['params'])
  out = head.apply({'params': params}, feats)
  p = params
  for level, f in enumerate(feats):
    f = np.asarray(f, np.float64)

    def tower(name, n):
      x = f
      for i in range(n):
        u = p[f'{name}_{i}']
        x = _conv_nhwc(x, u['conv']['kernel'], None)
        x = np.maximum(_group_norm_np(x, 4, u['gn']['scale'], u['gn']['bias']), 0)
      return x

    cls_f, id_f, reg_f = tower('cls_convs', 2), tower('id_convs', 3), tower('reg_convs', 2)
    conv = lambda x, name: _conv_nhwc(x, p[name]['kernel'], p[name]['bias'])
    stride = (8, 16, 32, 64, 128)[level]
    ref = {'cls': conv(cls_f, 'conv_cls'), 'id': conv(id_f, 'conv_id'),
           'reg': np.maximum(conv(reg_f, 'conv_reg') * p['scales'][level], 0) * stride,
           'ctr': conv(reg_f, 'conv_centerness'), 'ctrl': conv(reg_f, 'controller')}
    for key, r in ref.items():
      np.testing.assert_allclose(out[key][level], r, rtol=2e-4, atol=2e-4,
                                 err_msg=f'{key} level {level}')


def test_mask_branch_at_stride_4_is_the_stride_8_sum_upsampled():
  """out_stride=4 upsamples the summed P3..P5 features x2 before the tower:
  with no tower convs the 1x1 output commutes with the (row-stochastic)
  upsampling, so it equals the stride-8 branch's output upsampled x2."""
  from iai_jax.models.layers import aligned_bilinear
  rng = np.random.default_rng(5)
  feats = [jnp.asarray(rng.normal(size=(2, 8 // s, 12 // s, 16)), jnp.float32)
           for s in (1, 2, 4)]
  b8 = C.MaskBranch(channels=8, num_convs=0)
  b4 = C.MaskBranch(channels=8, num_convs=0, out_stride=4)
  v = b8.init(jax.random.key(0), feats)
  out8, out4 = b8.apply(v, feats), b4.apply(v, feats)
  assert out4.shape == (2, 16, 24, 8)
  np.testing.assert_allclose(out4, aligned_bilinear(out8, 2), atol=1e-5)
  # with a tower conv (BN, ReLU) in between, the tower runs on the finer
  # grid: no longer the coarse result upsampled
  t8 = C.MaskBranch(channels=8, num_convs=1)
  t4 = C.MaskBranch(channels=8, num_convs=1, out_stride=4)
  v = t8.init(jax.random.key(1), feats)
  diff = np.abs(np.asarray(t4.apply(v, feats))
                - np.asarray(aligned_bilinear(t8.apply(v, feats), 2)))
  assert diff.max() > 1e-2
  # upsample_before_tower=False: the tower stays at stride 8 and only its
  # 8-channel output is upsampled, so it is exactly that upsampling
  late = C.MaskBranch(channels=8, num_convs=1, out_stride=4,
                      upsample_before_tower=False)
  np.testing.assert_allclose(late.apply(v, feats),
                             aligned_bilinear(t8.apply(v, feats), 2), atol=1e-5)


def test_stride_4_mask_logits_go_straight_to_the_loss_grid():
  rng = np.random.default_rng(6)
  logits = jnp.asarray(rng.normal(size=(3, 10, 14)), jnp.float32)
  np.testing.assert_array_equal(C.mask_logits_at_stride4(logits, 4), logits)
  full = np.asarray(C.mask_logits_at_input(logits, 4))
  assert full.shape == (3, 40, 56)
  np.testing.assert_allclose(full[:, 2::4, 2::4], logits, atol=1e-6)


def test_step_batchnorm_matches_torch_batchnorm_per_time_step():
  """Clips of T frames (clip-major): each time step is normalised with its
  own batch statistics, and the running statistics take T updates in time
  order with torch's unbiased variance - as the authors' head, run once per
  time step with an nn.BatchNorm2d in train mode."""
  import torch
  b, t, h, w, c = 3, 4, 5, 6, 8
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(b, t, h, w, c)) * rng.uniform(0.5, 3, c)
       + rng.normal(size=c)).astype(np.float32)
  bn = C.StepBatchNorm(momentum=0.9)
  v = bn.init(jax.random.key(0), jnp.zeros((b * t, h, w, c)))
  scale = rng.uniform(0.5, 2, c).astype(np.float32)
  bias = rng.normal(size=c).astype(np.float32)
  mean0 = rng.normal(size=c).astype(np.float32)
  var0 = rng.uniform(0.5, 2, c).astype(np.float32)
  v = {'params': {'scale': scale, 'bias': bias},
       'batch_stats': {'mean': mean0, 'var': var0}}
  out, upd = bn.apply(v, jnp.asarray(x.reshape(b * t, h, w, c)), True, t,
                      mutable=['batch_stats'])
  out = np.asarray(out).reshape(b, t, h, w, c)
  ref = torch.nn.BatchNorm2d(c, momentum=0.1, eps=1e-5).train()
  with torch.no_grad():
    ref.weight.copy_(torch.from_numpy(scale))
    ref.bias.copy_(torch.from_numpy(bias))
    ref.running_mean.copy_(torch.from_numpy(mean0))
    ref.running_var.copy_(torch.from_numpy(var0))
    for step in range(t):
      xt = torch.from_numpy(x[:, step].transpose(0, 3, 1, 2).copy())
      want = ref(xt).numpy().transpose(0, 2, 3, 1)
      np.testing.assert_allclose(out[:, step], want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(upd['batch_stats']['mean'],
                             ref.running_mean.numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(upd['batch_stats']['var'],
                             ref.running_var.numpy(), rtol=1e-5, atol=1e-6)
  # one step over all B*T frames would give other numbers
  pooled, _ = bn.apply(v, jnp.asarray(x.reshape(b * t, h, w, c)), True, 1,
                       mutable=['batch_stats'])
  assert np.abs(np.asarray(pooled).reshape(out.shape) - out).max() > 1e-2
  # eval: the running statistics
  ev = bn.apply(v, jnp.asarray(x[:, 0]), False)
  np.testing.assert_allclose(
      ev, (x[:, 0] - mean0) / np.sqrt(var0 + 1e-5) * scale + bias,
      rtol=1e-5, atol=1e-5)
