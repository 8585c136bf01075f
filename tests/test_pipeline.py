"""The clip pipeline on hand-built video records."""

import numpy as np
import pytest

from iai_jax import config_lib
from iai_jax.data import pipeline as P
from video_fixtures import make_record as _record


def _config(**train):
  c = config_lib.make_config('ytvis19', 'tiny')
  with c.unlocked():
    c.model.max_obj_num = 4  # IDs 0..2, 3 = new
    c.input.size = (32, 64)
    c.input.train_max_long = 64
    for k, v in train.items():
      c.train[k] = v
  return c


def test_clip_indices_strides_and_short_videos():
  rng = np.random.default_rng(0)
  for _ in range(200):
    idx = P.sample_clip_indices(30, 5, 3, rng)
    gaps = np.diff(idx)
    assert len(idx) == 5 and idx[0] >= 0 and idx[-1] <= 29
    assert ((gaps >= 1) & (gaps <= 3)).all()
  # stride 1 only: consecutive frames
  idx = P.sample_clip_indices(10, 5, 1, rng)
  np.testing.assert_array_equal(np.diff(idx), 1)
  # a 3-frame video repeats its last frame
  for _ in range(50):
    idx = P.sample_clip_indices(3, 5, 3, rng)
    assert idx[0] == 0 and idx.max() == 2 and (np.diff(idx) >= 0).all()
  # every start is used
  starts = {int(P.sample_clip_indices(12, 5, 1, rng)[0]) for _ in range(300)}
  assert starts == set(range(8))


def test_id_renumbering_and_new_targets():
  # instance a appears in frame 0, b in frame 2, a leaves in frame 3
  id_map = np.full((4, 8, 8), P.BACKGROUND, np.uint8)
  id_map[0:3, 0:2, 0:2] = 0          # a: frames 0..2
  id_map[2:4, 4:8, 5:7] = 1          # b: frames 2..3
  box, present, id_target, new = P.clip_targets(id_map, max_obj_num=4)
  np.testing.assert_array_equal(present[:, :2], [[1, 0], [1, 0], [1, 1], [0, 1]])
  np.testing.assert_array_equal(id_target[:, :2], [[3, -1], [0, -1], [0, 3], [-1, 1]])
  np.testing.assert_array_equal(new, [True, False, True, False])
  np.testing.assert_array_equal(box[2, 1], [5, 4, 7, 8])
  assert (id_target[:, 2:] == -1).all()


def test_training_clip_renumbers_by_first_appearance_and_handles_crowd():
  cfg = _config(max_stride=1, flip=False, clip_len=3)
  rec = _record(frames=3, tracks=[
      (5, False, {1: (0, 8, 0, 8), 2: (0, 8, 0, 8)}),        # appears 2nd
      (2, False, {0: (10, 20, 10, 30), 1: (10, 20, 10, 30)}),  # appears 1st
      (1, True, {0: (24, 32, 40, 64)}),                      # crowd
  ])
  clip = P.make_training_clip(rec, np.random.default_rng(0), cfg)
  np.testing.assert_array_equal(clip['frame_index'], [0, 1, 2])
  np.testing.assert_array_equal(clip['label'], [2, 5, -1, -1])
  np.testing.assert_array_equal(clip['id_target'][:, :2], [[3, -1], [0, 3], [-1, 1]])
  np.testing.assert_array_equal(clip['new_instance'], [True, True, False])
  assert clip['image'].shape == (3, 32, 64, 3) and clip['image'].dtype == np.uint8
  m = clip['id_map']
  assert (m[0, 10:20, 10:30] == 0).all() and (m[1, 0:8, 0:8] == 1).all()
  assert (m[0, 24:32, 40:64] == P.IGNORE).all()  # crowd: ignore, not a target
  assert (m[1, 24:32, 40:64] == P.BACKGROUND).all()
  np.testing.assert_array_equal(clip['box'][0, 0], [10, 10, 30, 20])


def test_overlaps_go_to_the_smallest_and_cap_becomes_ignore():
  cfg = _config(max_stride=1, flip=False, clip_len=2)
  rec = _record(frames=2, tracks=[
      (0, False, {0: (0, 20, 0, 40)}),   # big
      (1, False, {0: (5, 10, 5, 10)}),   # small, inside big
      (2, False, {0: (25, 30, 0, 5)}),
      (3, False, {1: (25, 30, 50, 60)}),  # 4th instance: over the cap of 3
  ])
  clip = P.make_training_clip(rec, np.random.default_rng(0), cfg)
  m = clip['id_map']
  assert (m[0, 5:10, 5:10] == 1).all() and m[0, 0, 0] == 0
  assert (m[1, 25:30, 50:60] == P.IGNORE).all()
  np.testing.assert_array_equal(clip['label'], [0, 1, 2, -1])


def test_flip_and_resize_keep_boxes_and_masks_consistent():
  cfg = _config(max_stride=1, clip_len=2)
  with cfg.unlocked():
    cfg.input.size = (16, 32)  # half size
    cfg.input.train_max_long = 32
  rec = _record(frames=2, tracks=[(3, False, {0: (4, 12, 8, 24), 1: (4, 12, 8, 24)})])
  flips = set()
  for seed in range(8):
    clip = P.make_training_clip(rec, np.random.default_rng(seed), cfg)
    np.testing.assert_array_equal(clip['image_size'], [16, 32])
    box = clip['box'][0, 0]
    ys, xs = np.nonzero(clip['id_map'][0] == 0)
    np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    np.testing.assert_array_equal(box[[1, 3]], [2, 6])
    flipped = box[0] == 32 - 12
    assert flipped or box[0] == 4
    np.testing.assert_array_equal(box[2] - box[0], 8)
    # the image's green half moves with the flip, the same for both frames
    green_left = clip['image'][:, 8, 2, 1].mean() > 100
    assert green_left == (not flipped)
    assert (clip['image'][0, :, :, 1] > 100).sum() == (clip['image'][1, :, :, 1] > 100).sum()
    flips.add(bool(flipped))
  assert flips == {True, False}


def test_bucket_padding_and_portrait_videos():
  cfg = _config(flip=False, clip_len=2)
  assert P.bucket_size(cfg) == (32, 64)
  rec = _record(h=64, w=32, frames=2, tracks=[(0, False, {0: (0, 64, 0, 32)})])
  clip = P.make_training_clip(rec, np.random.default_rng(0), cfg)
  assert clip['image'].shape == (2, 32, 64, 3)
  np.testing.assert_array_equal(clip['image_size'], [32, 16])
  assert (clip['id_map'][0, :, 16:] == P.BACKGROUND).all()
  ms = config_lib.make_config('ytvis19', 'ms')
  assert P.bucket_size(ms) == (480, 960)
  assert P.bucket_size(config_lib.make_config('ytvis19')) == (384, 640)


def test_bad_frame_size_is_reported():
  cfg = _config(clip_len=2)
  rec = _record(frames=2, tracks=[])
  rec['height'] = 40
  with pytest.raises(ValueError, match='frame 0 is 64x32, the record says 64x40'):
    P.make_training_clip(rec, np.random.default_rng(0), cfg)
