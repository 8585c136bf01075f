"""Host-side tracking: Hungarian ID matching, ID issuance, ID masks, video tracks."""

import itertools

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from iai_jax import results as results_lib
from iai_jax import tracking


# ----------------------------------------------------------------- references
def authors_matrix(id_prob):
  """The authors' cost matrix: N probabilities, a zero column, K-1 copies of
  the "new" column N-1 (iai_condinst_head.py L740-744 with the padding of
  L876-877)."""
  k, n = id_prob.shape
  return np.concatenate([id_prob, np.zeros((k, 1)),
                         np.repeat(id_prob[:, n - 1:], k - 1, axis=1)], axis=1)


def brute_force_total(id_prob):
  """Best total of an injective row -> column assignment, by enumeration."""
  if id_prob.shape[0] == 0:
    return 0.0
  m = authors_matrix(id_prob)
  k, c = m.shape
  best = -np.inf
  for cols in itertools.permutations(range(c), k):
    best = max(best, sum(m[r, col] for r, col in enumerate(cols)))
  return best


class ReferenceTracker:
  """The authors' issuance loop (head L735-772) written out plainly; the
  matched columns are given (they come from the Hungarian step)."""

  def __init__(self, n):
    self.n = n
    self.curr = 0
    self.first = True

  def step(self, columns, keep):
    rows = [r for r in range(len(keep)) if keep[r]]
    curr_max = self.curr
    ids = [-1] * len(keep)
    used = []
    for r, c in zip(rows, columns):
      if self.first or c >= curr_max:
        c = self.curr
        self.curr = min(self.curr + 1, self.n - 2)
      if c in used:
        c = self.curr
        self.curr = min(self.curr + 1, self.n - 2)
      ids[r] = c
      used.append(c)
    self.first = False
    return np.array(ids)


# ----------------------------------------------------------------- matching
def test_match_ids_is_an_optimal_assignment_of_the_authors_matrix():
  rng = np.random.default_rng(0)
  for _ in range(150):
    n = int(rng.integers(3, 6))
    k = int(rng.integers(0, 4))
    p = rng.random((k, n)).astype(np.float32)
    if rng.random() < 0.3:   # peaked rows, like a trained ID head
      p = p ** 4
    got = tracking.match_ids(p)
    assert got.shape == (k,) and len(set(got.tolist())) == k
    assert (got < n + k).all()
    total = authors_matrix(p)[np.arange(k), got].sum() if k else 0.0
    assert np.isclose(total, brute_force_total(p), atol=1e-6)


def test_match_ids_lets_every_detection_be_new():
  # All detections prefer "new" over any existing ID: each gets column N-1,
  # a copy of it, or (worth 0) the zero column N - all "new".
  p = np.full((6, 4), 0.05)
  p[:, 3] = 0.9
  cols = tracking.match_ids(p)
  assert sorted(cols.tolist()) == [3] + list(range(5, 10))


def test_match_ids_resolves_a_contested_id():
  # Both want ID 0; the assignment maximising the sum gives it to row 1.
  p = np.array([[0.8, 0.0, 0.0, 0.75],
                [0.9, 0.0, 0.0, 0.1]])
  cols = tracking.match_ids(p)
  assert cols[1] == 0 and cols[0] in (3, 5)


def test_match_ids_rejects_nan():
  with pytest.raises(ValueError, match='finite'):
    tracking.match_ids(np.array([[0.1, np.nan]]))


# ----------------------------------------------------------------- issuance
def _onehot_prob(classes, n, hi=0.9, lo=0.02):
  p = np.full((len(classes), n), lo)
  p[np.arange(len(classes)), classes] = hi
  return p


def test_tracker_equals_reference_on_random_videos():
  rng = np.random.default_rng(1)
  for _ in range(60):
    n = int(rng.integers(3, 7))
    tr, ref = tracking.IdTracker(n), ReferenceTracker(n)
    for _ in range(int(rng.integers(1, 8))):
      d = int(rng.integers(0, 5))
      p = (rng.random((d, n)) ** 3).astype(np.float32)
      keep = rng.random(d) < 0.8
      rows = np.flatnonzero(keep)
      cols = tracking.match_ids(p[rows]) if not ref.first else [0] * rows.size
      np.testing.assert_array_equal(tr.step(p, keep), ref.step(cols, keep))
      assert tr.num_issued == ref.curr <= n - 2


def test_first_frame_every_detection_is_new_in_order():
  tr = tracking.IdTracker(6)
  # Even detections that look like an existing ID are new on frame 1.
  p = _onehot_prob([2, 0, 5, 1], 6)
  ids = tr.step(p, np.array([True, True, False, True]))
  np.testing.assert_array_equal(ids, [0, 1, -1, 2])
  assert ids.dtype == np.int32
  assert tr.new_instance and tr.num_issued == 3


def test_known_ids_are_kept_and_new_instances_get_the_next_id():
  n = 8
  tr = tracking.IdTracker(n)
  tr.step(_onehot_prob([7, 7], n), None)   # IDs 0, 1
  ids = tr.step(_onehot_prob([1, 0], n), None)
  np.testing.assert_array_equal(ids, [1, 0])
  assert not tr.new_instance
  ids = tr.step(_onehot_prob([0, n - 1, 1, n - 1], n), None)
  np.testing.assert_array_equal(ids, [0, 2, 1, 3])
  assert tr.new_instance and tr.num_issued == 4


def test_an_id_not_issued_yet_means_new():
  n = 10
  tr = tracking.IdTracker(n)
  tr.step(_onehot_prob([n - 1], n), None)   # ID 0
  # Row 0 points at ID 5, never issued: it takes the next free ID, 1; row 1
  # points at ID 1, which was not issued *before this frame* either: new, 2.
  ids = tr.step(_onehot_prob([5, 1, 0], n), None)
  np.testing.assert_array_equal(ids, [1, 2, 0])
  assert tr.new_instance


def test_not_kept_detections_do_not_take_part():
  n = 5
  tr = tracking.IdTracker(n)
  tr.step(_onehot_prob([4], n), None)  # ID 0
  p = np.array([[0.99, 0.0, 0.0, 0.0, 0.0],   # dropped, would win ID 0
                [0.60, 0.0, 0.0, 0.0, 0.3]])
  ids = tr.step(p, np.array([False, True]))
  np.testing.assert_array_equal(ids, [-1, 0])


def test_at_the_cap_new_instances_share_id_n_minus_2():
  # N = 5: IDs 0, 1, 2 are given one identity each; the counter then stays
  # at N-2 = 3 and every later new instance gets ID 3 (the authors' clamp).
  n = 5
  tr = tracking.IdTracker(n)
  ids = tr.step(_onehot_prob([4, 4, 4, 4, 4], n), None)
  np.testing.assert_array_equal(ids, [0, 1, 2, 3, 3])
  assert tr.num_issued == 3 and tr.new_instance
  # Later: the known IDs still match; "new" ones and the one pointing at
  # slot 3 (not issued before: the counter is 3) get ID 3 again.
  ids = tr.step(_onehot_prob([2, 4, 3, 0], n), None)
  np.testing.assert_array_equal(ids, [2, 3, 3, 0])
  assert tr.new_instance and tr.num_issued == 3
  ids = tr.step(_onehot_prob([1], n), None)
  np.testing.assert_array_equal(ids, [1])
  assert not tr.new_instance


def test_id_taken_twice_in_a_frame_gets_the_next_id(monkeypatch):
  # Hungarian columns are unique, so force a duplicate to test the rule.
  tr = tracking.IdTracker(8)
  tr.step(_onehot_prob([7, 7], 8), None)  # IDs 0, 1
  monkeypatch.setattr(tracking, 'match_ids', lambda p: np.array([1, 1, 0]))
  ids = tr.step(np.zeros((3, 8)), None)
  np.testing.assert_array_equal(ids, [1, 2, 0])
  # the authors set new_inst_exists only on the "new column" path (head
  # L748-755), not when a taken ID is replaced
  assert not tr.new_instance


def test_empty_first_frame_then_all_new_and_reset():
  n = 6
  tr = tracking.IdTracker(n)
  assert tr.step(np.zeros((0, n)), None).shape == (0,)
  assert not tr.new_instance
  np.testing.assert_array_equal(tr.step(_onehot_prob([2, 0], n), None), [0, 1])
  tr.step(_onehot_prob([5], n), None)
  assert tr.num_issued == 3
  tr.reset()
  assert tr.num_issued == 0
  np.testing.assert_array_equal(tr.step(_onehot_prob([1, 0], n), None), [0, 1])


def test_tracker_checks_shapes():
  tr = tracking.IdTracker(4)
  with pytest.raises(ValueError, match='id_prob'):
    tr.step(np.zeros((2, 5)), None)
  with pytest.raises(ValueError, match='keep'):
    tr.step(np.zeros((2, 4)), np.ones(3, bool))


# ----------------------------------------------------------------- ID masks
def test_id_mask_as_the_authors_write_it():
  """postprocess.id_mask: channel d = the pixels of the last detection with
  ID d, channel N = where no detection with an ID is; the same layout as
  training's targets.id_mask_from_map where IDs are unique."""
  from iai_jax import postprocess, targets
  n = 6
  masks = np.zeros((5, 5, 7), bool)
  masks[0, 0:2, 0:3] = True          # ID 3
  masks[1, 2:4, 2:6] = True          # ID 0
  masks[2, 4, :] = True              # no ID: background
  masks[3, 3:5, 6] = True            # ID 4 (= N-2)
  masks[4, 0, 5:7] = True            # ID 4 again (at the cap): the last wins
  ids = np.array([3, 0, -1, 4, 4], np.int32)
  out = np.asarray(postprocess.id_mask(masks, ids, n))
  assert out.shape == (5, 7, n + 1) and out.dtype == np.float32
  np.testing.assert_array_equal(out[..., 3], masks[0])
  np.testing.assert_array_equal(out[..., 0], masks[1])
  np.testing.assert_array_equal(out[..., 4], masks[4])  # det 3 overwritten
  for c in (1, 2, 5):
    assert not out[..., c].any()
  np.testing.assert_array_equal(out[..., n], ~(masks[[0, 1, 3, 4]].any(0)))
  # det 3's pixels: no channel set (as the authors' overwrite leaves them)
  assert (out[3:5, 6].sum(-1) == 0).all()
  # unique IDs: the one-hot of the ID map, as training writes it
  label = np.where(masks[0], 3, np.where(masks[1], 0, n))
  ref = np.asarray(targets.id_mask_from_map(label[None], n))[0]
  np.testing.assert_array_equal(
      np.asarray(postprocess.id_mask(masks[:2], ids[:2], n)), ref)


# ----------------------------------------------------------------- RLE
def test_rle_round_trip():
  rng = np.random.default_rng(2)
  cases = [rng.random((h, w)) < 0.4 for h, w in ((1, 1), (3, 5), (17, 9),
                                                 (64, 48))]
  cases += [np.zeros((7, 4), bool), np.ones((4, 7), bool),
            (rng.random((6, 6)) < 0.5).astype(np.uint8)]
  for m in cases:
    rle = results_lib.encode_mask(m)
    assert isinstance(rle['counts'], str)
    assert rle['size'] == [m.shape[0], m.shape[1]]
    np.testing.assert_array_equal(results_lib.decode_mask(rle), m != 0)
    area = mask_utils.area({'size': rle['size'],
                            'counts': rle['counts'].encode()})
    assert area == int((m != 0).sum())
  with pytest.raises(ValueError, match='bool'):
    results_lib.encode_mask(np.full((2, 2), 0.7))


# ----------------------------------------------------------------- videos
def _frame_masks(d, h, w, fill):
  m = np.zeros((d, h, w), bool)
  for k, (y0, y1, x0, x1) in enumerate(fill):
    m[k, y0:y1, x0:x1] = True
  return m


def _dec(seg):
  return None if seg is None else results_lib.decode_mask(seg)


def test_video_scores_are_averaged_over_all_frames_with_absent_as_zero():
  p, n = 3, 5
  acc = tracking.VideoAccumulator(p, n, max_per_img=10)
  h, w = 6, 8
  masks = _frame_masks(2, h, w, [(0, 2, 0, 2), (3, 6, 4, 8)])
  # frame 0: ID 0 (class 1: 0.8), ID 2 (class 0: 0.2); counter at 3
  acc.add_frame(np.array([0, 2]), np.array([[0.1, 0.8, 0.0], [0.2, 0.0, 0.0]]),
                masks, 3)
  # frame 1: ID 0 again (class 1: 0.8, class 2: 0.4); one ignored detection
  acc.add_frame(np.array([-1, 0]), np.array([[0.9, 0.9, 0.9], [0.0, 0.8, 0.4]]),
                masks, 3)
  # frame 2: nothing
  acc.add_frame(np.zeros((0,), int), np.zeros((0, p)),
                np.zeros((0, h, w), bool), 3)
  # frame 3: ID 1 (class 2: 0.3)
  acc.add_frame(np.array([1]), np.array([[0.0, 0.0, 0.3]]), masks[1:], 3)
  assert acc.num_frames == 4
  tracks = acc.finish()
  got = [(t['id'], t['label'], round(t['score'], 6)) for t in tracks]
  # means over 4 frames: ID0 c1 0.4, ID0 c2 0.1, ID1 c2 0.075, ID0 c0 0.025,
  # ID2 c0 0.05 (not above 0.05: out)
  assert got == [(0, 1, 0.4), (0, 2, 0.1), (1, 2, 0.075)]
  for t in tracks:
    assert len(t['segmentations']) == 4
    assert isinstance(t['score'], float)
  # an issued ID has a mask in every frame, empty where it is absent
  seg0 = tracks[0]['segmentations']
  np.testing.assert_array_equal(_dec(seg0[0]), masks[0])
  np.testing.assert_array_equal(_dec(seg0[1]), masks[1])
  assert not _dec(seg0[2]).any() and not _dec(seg0[3]).any()
  seg1 = tracks[2]['segmentations']
  assert [_dec(s).sum() for s in seg1[:3]] == [0, 0, 0]
  np.testing.assert_array_equal(_dec(seg1[3]), masks[1])


def test_masks_start_at_issuance_and_never_for_the_cap_id():
  """An ID's masks are null before the frame it was issued on; the shared
  cap ID N-2 (not below the counter) never gets one; the last detection of
  a frame with an ID wins its scores and mask."""
  p, n, h, w = 2, 4, 3, 3
  acc = tracking.VideoAccumulator(p, n, max_per_img=10)
  a, b, c = _frame_masks(3, h, w, [(0, 1, 0, 1), (1, 2, 1, 2), (2, 3, 2, 3)])
  acc.add_frame(np.array([0]), np.array([[0.9, 0.0]]), a[None], 1)
  acc.add_frame(np.array([0, 1, 2, 2]),
                np.array([[0.9, 0.0], [0.0, 0.8], [0.7, 0.0], [0.0, 0.6]]),
                np.stack([a, b, c, a]), 2)  # counter 2: IDs 0, 1 have masks
  tracks = {(t['id'], t['label']): t for t in acc.finish()}
  assert set(tracks) == {(0, 0), (1, 1), (2, 1)}  # ID 2: its last (class 1)
  assert np.isclose(tracks[(0, 0)]['score'], 0.9)
  assert np.isclose(tracks[(2, 1)]['score'], 0.3)
  seg1 = tracks[(1, 1)]['segmentations']
  assert seg1[0] is None
  np.testing.assert_array_equal(_dec(seg1[1]), b)
  assert tracks[(2, 1)]['segmentations'] == [None, None]


def test_video_keeps_the_top_max_per_img_pairs():
  p = 4
  acc = tracking.VideoAccumulator(p, 8, max_per_img=3)
  scores = np.array([[0.9, 0.3, 0.6, 0.0],
                     [0.2, 0.7, 0.0, 0.0],
                     [0.0, 0.0, 0.0, 0.5]])
  acc.add_frame(np.array([4, 2, 6]), scores, np.ones((3, 2, 2), bool), 6)
  got = [(t['id'], t['label'], round(t['score'], 6)) for t in acc.finish()]
  assert got == [(4, 0, 0.9), (2, 1, 0.7), (4, 2, 0.6)]


def test_video_threshold_is_strict_and_configurable():
  acc = tracking.VideoAccumulator(1, 4, max_per_img=5, score_thr=0.3)
  acc.add_frame(np.array([0, 1]), np.array([[0.3], [0.31]]),
                np.ones((2, 1, 1), bool), 2)
  assert [t['id'] for t in acc.finish()] == [1]


def test_video_masks_callable_only_for_detections_with_ids():
  calls = []

  def masks(d):
    calls.append(d)
    return np.eye(3, dtype=bool)

  acc = tracking.VideoAccumulator(2, 4, max_per_img=5)
  acc.add_frame(np.array([-1, 0, -1, 1]), np.full((4, 2), 0.5), masks, 2)
  assert calls == [1, 3]
  tracks = acc.finish()
  assert len(tracks) == 4
  np.testing.assert_array_equal(_dec(tracks[0]['segmentations'][0]),
                                np.eye(3, dtype=bool))


def test_video_accumulator_checks_and_edge_cases():
  acc = tracking.VideoAccumulator(2, 4, max_per_img=5)
  assert acc.finish() == []
  acc.add_frame(np.array([-1]), np.zeros((1, 2)), np.zeros((1, 2, 2), bool), 0)
  assert acc.finish() == []   # frames but no IDs
  with pytest.raises(ValueError, match='below 4'):
    acc.add_frame(np.array([4]), np.zeros((1, 2)), np.zeros((1, 2, 2), bool), 1)
  with pytest.raises(ValueError, match='class_scores'):
    acc.add_frame(np.array([0]), np.zeros((1, 3)), np.zeros((1, 2, 2), bool), 1)
  acc.add_frame(np.array([0]), np.ones((1, 2)), np.zeros((1, 2, 2), bool), 1)
  with pytest.raises(ValueError, match='size'):
    acc.add_frame(np.array([0]), np.ones((1, 2)), np.zeros((1, 3, 2), bool), 1)
  acc.reset()
  assert acc.num_frames == 0 and acc.finish() == []


def test_tracker_and_accumulator_together():
  """A scripted 3-frame video: IDs persist, tracks collect the right masks."""
  n, p, h, w = 5, 2, 4, 4
  tr = tracking.IdTracker(n)
  acc = tracking.VideoAccumulator(p, n, max_per_img=10)
  a = _frame_masks(1, h, w, [(0, 2, 0, 2)])[0]
  b = _frame_masks(1, h, w, [(2, 4, 2, 4)])[0]
  frames = [
      (_onehot_prob([4, 4], n), [[0.9, 0.0], [0.0, 0.6]], [a, b]),
      (_onehot_prob([1, 0], n), [[0.0, 0.6], [0.9, 0.0]], [b, a]),
      (_onehot_prob([0], n), [[0.9, 0.0]], [a]),
  ]
  for prob, cls, ms in frames:
    ids = tr.step(prob, None)
    acc.add_frame(ids, np.array(cls), np.array(ms), tr.num_issued)
  tracks = acc.finish()
  assert [(t['id'], t['label']) for t in tracks] == [(0, 0), (1, 1)]
  assert np.isclose(tracks[0]['score'], 0.9) and np.isclose(tracks[1]['score'], 0.4)
  np.testing.assert_array_equal(_dec(tracks[0]['segmentations'][1]), a)
  np.testing.assert_array_equal(_dec(tracks[1]['segmentations'][1]), b)
  assert not _dec(tracks[1]['segmentations'][2]).any()  # absent: empty RLE
