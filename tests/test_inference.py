"""Online inference: NMS, overlap removal, ID maps, the per-frame loop."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from iai_jax import config_lib, inference, postprocess
from iai_jax.models import build_model, init_variables


def numpy_nms(boxes, scores, valid, thr):
  """Textbook greedy NMS: repeatedly take the best box, drop its overlaps."""
  order = sorted(np.flatnonzero(valid), key=lambda i: (-scores[i], i))
  keep = []
  while order:
    i = order.pop(0)
    keep.append(i)
    rest = []
    for j in order:
      x1 = max(boxes[i, 0], boxes[j, 0]); y1 = max(boxes[i, 1], boxes[j, 1])
      x2 = min(boxes[i, 2], boxes[j, 2]); y2 = min(boxes[i, 3], boxes[j, 3])
      inter = max(x2 - x1, 0) * max(y2 - y1, 0)
      a = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
      b = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
      if inter / (a + b - inter) <= thr:
        rest.append(j)
    order = rest
  out = np.zeros(len(scores), bool)
  out[keep] = True
  return out


@pytest.mark.parametrize('seed', range(6))
def test_greedy_nms_matches_numpy_reference(seed):
  rng = np.random.default_rng(seed)
  k = 60
  xy = rng.uniform(0, 80, (k, 2))
  wh = rng.uniform(4, 40, (k, 2))
  boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  scores = rng.uniform(0, 1, k).astype(np.float32)
  scores[:5] = scores[5]  # ties
  valid = rng.uniform(size=k) > 0.2
  got = jax.jit(postprocess.greedy_nms, static_argnums=3)(
      boxes, scores, valid, 0.5)
  np.testing.assert_array_equal(np.asarray(got),
                                numpy_nms(boxes, scores, valid, 0.5))


def test_nms_on_boxes_shifted_like_mmcv():
  """mmcv's batched_nms shifts all boxes by (largest coordinate + 1) before
  the IoU; in float32 that rounds: a pair at IoU 0.5 + 2e-8 (suppressed)
  becomes one at exactly 0.5 (kept)."""
  boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 19.99999], [1000, 0, 1010, 10]],
                   np.float32)
  scores = np.array([0.9, 0.8, 0.1], np.float32)
  valid = np.ones(3, bool)
  shifted = (boxes + np.float32(boxes.max() + 1)).astype(np.float32)
  want = numpy_nms(shifted, scores, valid, 0.5)
  assert want.all() and not numpy_nms(boxes, scores, valid, 0.5)[1]
  got = postprocess.greedy_nms(jnp.asarray(boxes), jnp.asarray(scores),
                               jnp.asarray(valid), 0.5)
  np.testing.assert_array_equal(np.asarray(got), want)


def test_remove_overlaps_dropped_detections_still_take_their_pixels():
  m = np.zeros((4, 4, 4), bool)
  m[0, :2, :2] = True          # 4 px, first: kept whole
  m[1, :2, :4] = True          # 8 px, 4 taken by 0 -> 50% left: kept
  m[2, 0, :3] = True           # 3 px, all taken...
  m[2, 3, 3] = True            # ...+1 free: 1/4 = 25% left
  m[3, 3, 2:4] = True          # 2 px: (3, 3) taken by det 2 even if dropped
  out, keep = postprocess.remove_overlaps(jnp.asarray(m), jnp.ones(4, bool),
                                          0.3)
  out, keep = np.asarray(out), np.asarray(keep)
  np.testing.assert_array_equal(keep, [True, True, False, True])
  np.testing.assert_array_equal(out[0], m[0])
  np.testing.assert_array_equal(out[1], m[1] & ~m[0])
  assert not out[2].any()  # dropped: written nowhere...
  assert out[3].sum() == 1 and out[3, 3, 2]  # ...but (3, 3) is taken
  out, keep = postprocess.remove_overlaps(jnp.asarray(m), jnp.ones(4, bool),
                                          0.25)  # 25% is enough (>=)
  assert np.asarray(keep)[2] and np.asarray(out)[2].sum() == 1
  # a detection that is not valid (beyond NMS) takes nothing
  out, keep = postprocess.remove_overlaps(jnp.asarray(m),
                                          jnp.asarray([False, True, True, True]),
                                          0.3)
  np.testing.assert_array_equal(np.asarray(out)[1], m[1])


def test_original_masks_match_torch_bilinear_resize():
  """Probabilities cropped to the resized frame, resized as torch's
  F.interpolate(bilinear, align_corners=False) does, > 0.5; the kept ones
  minus the pixels of earlier kept ones."""
  import torch
  rng = np.random.default_rng(3)
  prob = rng.uniform(0, 1, (3, 16, 24)).astype(np.float32)
  resized, original = (12, 20), (27, 45)
  crop = torch.from_numpy(prob[:, None, :12, :20])
  ref = torch.nn.functional.interpolate(crop, size=original, mode='bilinear',
                                        align_corners=False)[:, 0].numpy()
  np.testing.assert_allclose(np.asarray(postprocess.resize_bilinear(
      jnp.asarray(prob[:, :12, :20]), original)), ref, atol=2e-6)
  keep = np.array([True, False, True])
  got = np.asarray(postprocess.original_masks(
      jnp.asarray(prob), jnp.asarray(keep), resized=resized, original=original))
  m = ref > 0.5
  np.testing.assert_array_equal(got[0], m[0])
  assert not got[1].any()
  np.testing.assert_array_equal(got[2], m[2] & ~m[0])


def test_mask_probabilities_sigmoid_at_stride_4_then_upsampled():
  """The authors: logits aligned-bilinear x2, sigmoid, then the
  probabilities (not the logits) aligned-bilinear x4."""
  from iai_jax.models.condinst import dynamic_mask_head
  from iai_jax.models.layers import aligned_bilinear
  rng = np.random.default_rng(4)
  feats = jnp.asarray(rng.normal(size=(6, 10, 8)), jnp.float32)
  params = jnp.asarray(rng.normal(size=(2, 169)), jnp.float32)
  loc = jnp.asarray([[20.0, 12.0], [60.0, 30.0]])
  stride = jnp.asarray([8.0, 16.0])
  logits = dynamic_mask_head(feats, params, loc, stride, 8)[..., None]
  want = aligned_bilinear(jax.nn.sigmoid(aligned_bilinear(logits, 2)), 4)[..., 0]
  got = postprocess.mask_probabilities(feats, params, loc, stride, 8)
  assert got.shape == (2, 48, 80)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
  # not the same as upsampling the logits first
  wrong = jax.nn.sigmoid(aligned_bilinear(aligned_bilinear(logits, 2), 4))[..., 0]
  assert np.abs(np.asarray(wrong) - np.asarray(got)).max() > 1e-3


def test_candidates_in_the_padding_are_kept_with_clipped_boxes():
  cfg = config_lib.make_config('ytvis19', 'tiny')
  with cfg.unlocked():
    cfg.infer.candidates_per_level = 1000
  shapes = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
  out = {k: [] for k in ('cls', 'id', 'reg', 'ctr', 'ctrl')}
  for h, w in shapes:
    out['cls'].append(jnp.full((1, h, w, 4), 2.0))
    out['id'].append(jnp.full((1, h, w, 10), 2.0))
    out['reg'].append(jnp.full((1, h, w, 4), 20.0))
    out['ctr'].append(jnp.zeros((1, h, w, 1)))
    out['ctrl'].append(jnp.zeros((1, h, w, 169)))
  image_size = jnp.asarray([50, 70], jnp.int32)  # padded frame 64 x 96
  c = postprocess.select_candidates(out, image_size, cfg, jnp.asarray(True))
  loc = np.asarray(c['loc'])
  outside = (loc[:, 0] >= 70) | (loc[:, 1] >= 50)
  assert outside.any() and np.asarray(c['valid'])[outside].all()
  box = np.asarray(c['box'])
  assert box[:, [0, 2]].max() <= 70 and box[:, [1, 3]].max() <= 50
  assert box.min() >= 0
  # a location at (92, 60) with distances 20: box clipped to (70, 50)
  i = np.flatnonzero((loc[:, 0] == 92) & (loc[:, 1] == 60))[0]
  np.testing.assert_allclose(box[i], [70, 40, 70, 50])
  # first frame: (cls + 0.5 id) x ctr
  sig = 1 / (1 + np.exp(-2.0))
  np.testing.assert_allclose(np.asarray(c['rank'])[0], 1.5 * sig * 0.5,
                             rtol=1e-6)


def test_inference_size_pads_each_frame_size_to_32():
  cfg = config_lib.make_config('ytvis19')
  assert inference.inference_size(cfg, 720, 1280) == ((360, 640), (384, 640))
  assert inference.inference_size(cfg, 480, 640) == ((360, 480), (384, 480))
  assert inference.inference_size(cfg, 1280, 720) == ((640, 360), (640, 384))
  assert inference.inference_size(cfg, 180, 320) == ((360, 640), (384, 640))
  # mmcv's rounding: int(side * scale + 0.5)
  assert inference.inference_size(cfg, 333, 500) == ((360, 541), (384, 544))


@pytest.fixture(scope='module')
def segmenter():
  cfg = config_lib.make_config('ytvis19', 'tiny')
  with cfg.unlocked():  # random weights: let every candidate through
    cfg.infer.score_thr = 0.0
    cfg.infer.id_thr = 0.0
    cfg.infer.video_score_thr = 0.0
  model = build_model(cfg.model)
  variables = init_variables(model, jax.random.key(0))
  return inference.OnlineSegmenter(cfg, variables)


def _video(seed, n, h=90, w=150):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.accelerator
def test_online_loop_compiles_once_per_padded_size_and_keeps_ids(segmenter):
  seg = segmenter
  n = seg.config.model.max_obj_num
  frames = _video(0, 100)  # 90x150 -> 96x160, padded 96x160
  per_frame = [seg.step(f) for f in frames]
  assert seg.compilations() == 1
  # another video of the same padded size (80x160 stays 80x160): no
  # recompile; a 4:3 one (120x160 -> 96x128) is one more program
  for f in _video(1, 3, h=80, w=160):
    seg.step(f)
  assert seg.compilations() == 1
  for f in _video(3, 2, h=120, w=160):
    seg.step(f)
  assert seg.compilations() == 2
  seen = set()
  for insts in per_frame:
    ids = [i['id'] for i in insts if i['id'] < n - 2]
    assert len(ids) == len(set(ids))  # an ID at most once a frame (but the
    # shared cap ID N-2, which this random model reaches)
    assert all(0 <= i <= n - 2 for i in ids)
    for inst in insts:
      assert inst['mask'].shape == (90, 150)
      seen.add(inst['id'])
  # masks of a frame are disjoint
  for insts in per_frame:
    if insts:
      total = np.sum([i['mask'] for i in insts], axis=0)
      assert total.max() <= 1
  # the memory is bounded: its size does not depend on the frame index
  slots = seg.config.model.association.global_slots
  assert seg._memory.global_k.shape[2] == slots
  assert int(seg._memory.global_valid.sum()) <= slots


def test_first_frame_all_new_then_video_tracks(segmenter):
  seg = segmenter
  seg.reset()
  frames = _video(2, 4)
  first = seg.step(frames[0])
  if first:
    assert sorted(i['id'] for i in first) == list(range(len(first)))
  for f in frames[1:]:
    seg.step(f)
  tracks = seg.finish()
  assert seg.frames == 0  # ready for the next video
  for t in tracks:
    assert len(t['segmentations']) == 4


@pytest.mark.parametrize('bad, match', [
    (lambda f: f.transpose(2, 0, 1), r'channels first: pass '
     r'frame.transpose\(1, 2, 0\)'),
    (lambda f: f[None], r'a batch of shape \(1, 90, 150, 3\): pass one frame'),
    (lambda f: np.zeros((0, 0, 3), np.uint8), 'at least one pixel'),
    (lambda f: f.astype(np.float32) / 255, 'dtype float32: pass values 0..255'),
    (lambda f: f[..., 0], r'a grey \(90, 150\) image'),
])
def test_a_bad_frame_is_refused_before_the_video_changes(segmenter, bad,
                                                          match):
  """Issue 17: a bad frame used to reset the running video first."""
  seg = segmenter
  frames = _video(4, 3)
  seg.reset()
  straight = [seg.step(f) for f in frames]
  straight_tracks = seg.finish()
  seg.step(frames[0])
  seg.step(frames[1])
  with pytest.raises(ValueError, match=match):
    seg.step(bad(frames[1]))
  assert seg.frames == 2
  last = seg.step(frames[2])
  assert [i['id'] for i in last] == [i['id'] for i in straight[2]]
  tracks = seg.finish()
  assert len(tracks) == len(straight_tracks)
  for a, b in zip(tracks, straight_tracks):
    assert a['segmentations'] == b['segmentations']
