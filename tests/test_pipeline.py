"""The clip pipeline on hand-built video records (the authors' sampling and
augmentation, numbers worked out by hand)."""

import collections

import cv2
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
    for k, v in train.items():
      c.train[k] = v
  return c


# ----------------------------------------------------------------- sampling
def test_clip_frames_follow_the_authors_rule():
  rng = np.random.default_rng(0)
  frames = list(range(30))
  starts = collections.Counter()
  for _ in range(400):
    idx = P.sample_clip_frames(frames, 5, 3, rng)
    gaps = np.diff(idx)
    assert len(idx) == 5 and idx[0] >= 0 and idx[-1] <= 29
    assert ((gaps >= 1) & (gaps <= 3)).all()
    starts[int(idx[0])] += 1
  assert set(starts) == set(range(26))  # start uniform in [0, L - T]
  # a stride never leaves too little room for the remaining ones: 7 frames,
  # start 2 -> every stride is 1 (7 - 2 - 4 = 1)
  for _ in range(200):
    idx = P.sample_clip_frames(range(7), 5, 3, rng)
    if idx[0] == 2:
      np.testing.assert_array_equal(idx, [2, 3, 4, 5, 6])
    assert idx[-1] <= 6
  # stride 1 only: consecutive frames
  idx = P.sample_clip_frames(range(10), 5, 1, rng)
  np.testing.assert_array_equal(np.diff(idx), 1)


def test_short_videos_repeat_their_frames_cyclically():
  rng = np.random.default_rng(1)
  for _ in range(20):
    np.testing.assert_array_equal(P.sample_clip_frames([3, 5, 7], 5, 3, rng),
                                  [3, 5, 7, 3, 5])
  with pytest.raises(ValueError):
    P.sample_clip_frames([], 5, 3, rng)


def test_only_frames_with_an_instance_are_drawn():
  cfg = _config(clip_len=2, flip=False)
  rec = _record(frames=8, tracks=[
      (1, False, {2: (0, 8, 0, 8), 5: (0, 8, 0, 8), 6: (0, 8, 0, 8)}),
      (2, True, {0: (0, 8, 0, 8), 1: (0, 8, 0, 8)}),  # crowd: does not count
  ])
  seen = set()
  for seed in range(40):
    clip = P.make_training_clip(rec, np.random.default_rng(seed), cfg)
    seen |= set(clip['frame_index'].tolist())
    assert clip['present'].any(axis=1).all()
  assert seen == {2, 5, 6}


def test_present_to_id_targets_and_new_instances():
  present = np.array([[1, 0], [1, 0], [1, 1], [0, 1]], bool)
  present = np.concatenate([present, np.zeros((4, 2), bool)], axis=1)
  id_target, new = P.clip_targets(present, max_obj_num=4)
  np.testing.assert_array_equal(id_target[:, :2],
                                [[3, -1], [0, -1], [0, 3], [-1, 1]])
  np.testing.assert_array_equal(new, [True, False, True, False])
  assert (id_target[:, 2:] == -1).all()


def test_epoch_gives_every_video_its_clips():
  cfg = _config(clip_len=2, clips_per_video=5, batch_size=3)
  recs = [_record(frames=4, video_id=v, tracks=[(1, False, {
      f: (0, 8, 0, 8) for f in range(4)})]) for v in range(6)]
  ds = P.training_dataset(cfg, recs, seed=0, batch_size=3, prefetch=0)
  it = iter(ds)
  ids = np.concatenate([next(it)['video_id'] for _ in range(10)])  # 30 clips
  assert collections.Counter(ids.tolist()) == {v: 5 for v in range(6)}
  assert P.steps_per_epoch(cfg, 6) == 10
  assert P.steps_per_epoch(cfg, 7) == 12  # 35 clips: ceil(35 / 3)


# ----------------------------------------------------------------- clips
def test_clip_instances_numbered_by_track_id_and_crowd_is_background():
  cfg = _config(max_stride=1, flip=False, clip_len=3)
  rec = _record(frames=3, track_ids=[12, 30, 40], tracks=[
      (5, False, {1: (0, 8, 0, 8), 2: (0, 8, 0, 8)}),         # track 12
      (2, False, {0: (10, 20, 10, 30), 1: (10, 20, 10, 30)}),  # track 30
      (1, True, {0: (24, 32, 40, 64)}),                        # crowd
  ])
  clip = P.make_training_clip(rec, np.random.default_rng(0), cfg)
  np.testing.assert_array_equal(clip['frame_index'], [0, 1, 2])
  # ascending track id: track 12 is instance 0 though it appears second
  np.testing.assert_array_equal(clip['label'], [5, 2, -1, -1])
  np.testing.assert_array_equal(clip['id_target'][:, :2],
                                [[-1, 3], [3, 1], [0, -1]])
  np.testing.assert_array_equal(clip['new_instance'], [True, True, False])
  assert clip['image'].shape == (3, 32, 64, 3) and clip['image'].dtype == np.uint8
  m = clip['id_map']
  assert (m[0, 10:20, 10:30] == 1).all() and (m[1, 0:8, 0:8] == 0).all()
  # the authors drop crowd annotations from the targets: background
  assert (m[0, 24:32, 40:64] == P.BACKGROUND).all()
  np.testing.assert_array_equal(clip['box'][0, 1], [10, 10, 30, 20])
  np.testing.assert_array_equal(clip['center'][0, 1], [19.5, 14.5])
  np.testing.assert_array_equal(clip['mask4'][0, 1], m[0, 2::4, 2::4] == 1)
  np.testing.assert_array_equal(clip['image_size'], [[32, 64]] * 3)


def test_overlaps_go_to_the_smallest_then_the_lowest_and_cap_is_ignore():
  cfg = _config(max_stride=1, flip=False, clip_len=2)
  rec = _record(frames=2, tracks=[
      (0, False, {0: (0, 20, 0, 40)}),   # big
      (1, False, {0: (5, 10, 5, 10)}),   # small, inside big
      (2, False, {0: (25, 30, 0, 5), 1: (20, 25, 0, 5)}),
      (3, False, {1: (25, 30, 50, 60)}),  # 4th instance: over the cap of 3
  ])
  clip = P.make_training_clip(rec, np.random.default_rng(0), cfg)
  m = clip['id_map']
  assert (m[0, 5:10, 5:10] == 1).all() and m[0, 0, 0] == 0
  assert (m[1, 25:30, 50:60] == P.IGNORE).all()
  np.testing.assert_array_equal(clip['label'], [0, 1, 2, -1])
  # each instance keeps its own (overlapping) mask for the mask loss
  assert clip['mask4'][0, 0, 1, 1] == 1 and clip['mask4'][0, 1, 1, 1] == 1
  # equal areas: the lower instance number wins the shared pixels
  a = np.zeros((4, 4), bool)
  a[:2] = True
  b = np.zeros((4, 4), bool)
  b[1:3] = True
  out = P.paint_id_map([a, b], None, 4, 4)
  assert (out[1] == 0).all() and (out[2] == 1).all()
  out = P.paint_id_map([b, a], None, 4, 4)
  assert (out[1] == 0).all() and (out[0] == 1).all()


def test_resize_scales_boxes_and_masks_and_flips_each_frame():
  cfg = _config(max_stride=1, clip_len=2)
  with cfg.unlocked():
    cfg.input.size = (16, 32)  # half size
  rec = _record(frames=2, tracks=[(3, False, {0: (4, 12, 8, 24),
                                              1: (4, 12, 8, 24)})])
  patterns = set()
  for seed in range(16):
    clip = P.make_training_clip(rec, np.random.default_rng(seed), cfg)
    np.testing.assert_array_equal(clip['image_size'], [[16, 32]] * 2)
    flips = []
    for t in range(2):
      box = clip['box'][t, 0]
      # the original box (8, 4, 24, 12) x 0.5, flipped in a 32-wide frame
      flipped = box[0] == 32 - 12
      assert flipped or box[0] == 4
      np.testing.assert_array_equal(box[[1, 3]], [2, 6])
      np.testing.assert_array_equal(box[2] - box[0], 8)
      ys, xs = np.nonzero(clip['id_map'][t] == 0)
      np.testing.assert_array_equal(
          [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], box)
      # the frame's green half moves with its own flip
      green_left = clip['image'][t, 8, 2, 1] > 100
      assert green_left == (not flipped)
      flips.append(bool(flipped))
    patterns.add(tuple(flips))
  # drawn for every frame: frames of one clip flip differently
  assert (True, False) in patterns or (False, True) in patterns


def test_frames_resized_with_opencv_bilinear():
  cfg = _config(max_stride=1, clip_len=2, flip=False)
  with cfg.unlocked():
    cfg.input.size = (20, 40)
  rec = _record(frames=2, tracks=[(1, False, {0: (0, 8, 0, 8),
                                              1: (0, 8, 0, 8)})])
  clip = P.make_training_clip(rec, np.random.default_rng(0), cfg)
  original = P.decode_jpeg(rec['frames'][0])
  want = cv2.resize(original, (40, 20), interpolation=cv2.INTER_LINEAR)
  np.testing.assert_array_equal(clip['image'][0, :20, :40], want)
  assert (clip['image'][0, 20:] == 0).all()  # bucket 32 x 64


def test_multi_scale_range_per_clip_or_per_frame():
  cfg = _config(clip_len=3, flip=False)
  with cfg.unlocked():
    cfg.input.train_scale_range = ((40, 16), (64, 32))
  assert P.bucket_size(cfg) == (32, 64)
  rec = _record(frames=3, h=32, w=64, tracks=[(1, False, {
      f: (0, 16, 0, 32) for f in range(3)})])
  sizes_clip, sizes_frame = set(), set()
  for seed in range(30):
    clip = P.make_training_clip(rec, np.random.default_rng(seed), cfg)
    assert len({tuple(s) for s in clip['image_size']}) == 1
    sizes_clip.add(tuple(clip['image_size'][0]))
  assert len(sizes_clip) > 3
  for h, w in sizes_clip:  # fitted into a drawn (long 40..64, short 16..32)
    assert 16 <= h <= 32 and 32 <= w <= 64
  with cfg.unlocked():
    cfg.input.train_scale_per = 'frame'
  for seed in range(10):
    clip = P.make_training_clip(rec, np.random.default_rng(seed), cfg)
    sizes_frame.add(len({tuple(s) for s in clip['image_size']}))
  assert max(sizes_frame) > 1
  ms = config_lib.make_config('ytvis19', 'ms')
  assert ms.input.train_scale_range == ((649, 360), (960, 480))
  assert P.bucket_size(ms) == (480, 960)
  assert P.bucket_size(config_lib.make_config('ytvis19')) == (384, 640)
  ovis = config_lib.make_config('ovis')
  assert ovis.input.train_scale_per == 'frame' and ovis.input.train_scale_range


def test_draw_scale_is_uniform_over_the_range():
  cfg = _config()
  with cfg.unlocked():
    cfg.input.train_scale_range = ((649, 360), (960, 480))
  rng = np.random.default_rng(0)
  draws = np.array([P.draw_scale(cfg, rng) for _ in range(4000)])
  assert draws[:, 0].min() == 360 and draws[:, 0].max() == 480
  assert draws[:, 1].min() == 649 and draws[:, 1].max() == 960
  assert abs(draws[:, 1].mean() - (649 + 960) / 2) < 5


def test_portrait_videos_fit_the_landscape_bucket():
  cfg = _config(flip=False, clip_len=2)
  assert P.bucket_size(cfg) == (32, 64)
  rec = _record(h=64, w=32, frames=2, tracks=[(0, False, {0: (0, 64, 0, 32),
                                                          1: (0, 64, 0, 32)})])
  clip = P.make_training_clip(rec, np.random.default_rng(0), cfg)
  assert clip['image'].shape == (2, 32, 64, 3)
  np.testing.assert_array_equal(clip['image_size'], [[32, 16]] * 2)
  assert (clip['id_map'][0, :, 16:] == P.BACKGROUND).all()


def test_bad_frame_size_is_reported():
  cfg = _config(clip_len=2)
  rec = _record(frames=2, tracks=[])
  rec['height'] = 40
  with pytest.raises(P.TrainingDataError,
                     match=r'video 7 frame 0 is 64x32 \(width x height\), the '
                     'annotations say 64x40; find every such problem with '
                     'python -m iai_jax.data.check'):
    P.make_training_clip(rec, np.random.default_rng(0), cfg)


def test_unreadable_frame_and_bad_mask_name_the_video_and_frame():
  """Issue 17: these crashed training with a traceback naming no file, or
  (too few run lengths) trained on memory pycocotools never wrote."""
  cfg = _config(clip_len=2)
  rec = _record(frames=2, tracks=[(0, False, {0: (2, 6, 2, 6),
                                              1: (2, 6, 2, 6)})])
  rec['file_names'] = ['v/00000.jpg', 'v/00001.jpg']
  broken = dict(rec, frames=[rec['frames'][0], rec['frames'][1][:40]])
  with pytest.raises(P.TrainingDataError,
                     match=r'video 7 frame 1 \(v/00001.jpg\): the image does '
                     r'not decode \(.*\); find every such problem with python '
                     r'-m iai_jax.data.check'):
    P.make_training_clip(broken, np.random.default_rng(0), cfg)
  for counts, problem in ((b'52', 'add up to 7 pixels, not height x width = '
                           '32 x 64 = 2048'),
                          (rec['rle'][0] + b'3', r'add up to \d+ pixels, not')):
    bad = dict(rec, rle=np.asarray([counts, rec['rle'][1]], object))
    with pytest.raises(P.TrainingDataError,
                       match=r'video 7 frame 0 \(v/00000.jpg\): the mask of '
                       f'track 0: the run lengths of "counts" {problem}'):
      P.make_training_clip(bad, np.random.default_rng(0), cfg)


def test_training_loop_reports_the_bad_record_however_it_is_wrapped():
  from iai_jax import train
  cfg = _config(clip_len=2, batch_size=2, clips_per_video=1)
  good = _record(frames=2, tracks=[(0, False, {0: (2, 6, 2, 6)})])
  bad = dict(good, video_id=9, frames=[good['frames'][0][:40]] * 2)
  it = iter(P.training_dataset(cfg, [good, bad], prefetch=1))
  with pytest.raises(P.TrainingDataError, match='video 9 frame .: the image '
                     'does not decode'):
    for _ in range(4):
      train.next_batch(it)

  class Wrapped:  # as a worker process re-raises it
    def __next__(self):
      try:
        raise P.TrainingDataError('video 3 frame 1: the image does not decode')
      except P.TrainingDataError as e:
        raise RuntimeError('worker failed') from e
  with pytest.raises(P.TrainingDataError, match='video 3 frame 1'):
    train.next_batch(Wrapped())
