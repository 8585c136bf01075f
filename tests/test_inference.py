"""Online inference: NMS, overlap removal, ID maps, the per-frame loop."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from iai_jax import config_lib, inference
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
  got = jax.jit(inference.greedy_nms, static_argnums=3)(
      boxes, scores, valid, 0.5)
  np.testing.assert_array_equal(np.asarray(got),
                                numpy_nms(boxes, scores, valid, 0.5))


def test_remove_overlaps_by_hand():
  m = np.zeros((3, 4, 4), bool)
  m[0, :2, :2] = True          # 4 px, first: kept whole
  m[1, :2, :4] = True          # 8 px, 4 taken by 0 -> 50% left: kept
  m[2, 0, :3] = True           # 3 px, all taken -> dropped
  m[2, 3, 3] = True            # +1 px free: 1/4 = 25% < ... kept at 0.1
  out, keep = inference.remove_overlaps(jnp.asarray(m), jnp.ones(3, bool), 0.3)
  out, keep = np.asarray(out), np.asarray(keep)
  np.testing.assert_array_equal(keep, [True, True, False])
  np.testing.assert_array_equal(out[0], m[0])
  np.testing.assert_array_equal(out[1], m[1] & ~m[0])
  assert not out[2].any()  # dropped: claims nothing
  out, keep = inference.remove_overlaps(jnp.asarray(m), jnp.ones(3, bool), 0.1)
  assert np.asarray(keep)[2] and np.asarray(out)[2].sum() == 1
  # an invalid detection claims nothing and does not block later ones
  out, keep = inference.remove_overlaps(jnp.asarray(m),
                                        jnp.asarray([False, True, True]), 0.3)
  np.testing.assert_array_equal(np.asarray(out)[1], m[1])


def test_id_map_from_detections():
  m = np.zeros((3, 2, 3), bool)
  m[0, 0, 0] = True
  m[1, 1, :] = True
  m[2, 0, 2] = True
  got = inference.id_map_from_detections(jnp.asarray(m),
                                         jnp.asarray([4, 0, -1]), 7)
  np.testing.assert_array_equal(np.asarray(got), [[4, 7, 7], [0, 0, 0]])


def test_inference_size_buckets():
  cfg = config_lib.make_config('ytvis19')
  assert inference.inference_size(cfg, 720, 1280) == ((360, 640), (384, 640))
  assert inference.inference_size(cfg, 480, 640) == ((360, 480), (384, 640))
  assert inference.inference_size(cfg, 1280, 720) == ((640, 360), (640, 384))


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


def test_online_loop_compiles_once_per_bucket_and_keeps_ids(segmenter):
  seg = segmenter
  n = seg.config.model.max_obj_num
  frames = _video(0, 100)
  per_frame = [seg.step(f) for f in frames]
  assert seg.compilations() == 1
  # another video of the same bucket (different original size): no recompile
  for f in _video(1, 3, h=80, w=160):
    seg.step(f)
  assert seg.compilations() == 1
  seen = set()
  for insts in per_frame:
    ids = [i['id'] for i in insts]
    assert len(ids) == len(set(ids))  # an ID at most once a frame
    assert all(0 <= i < n - 1 for i in ids)
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
