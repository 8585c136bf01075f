"""Host-side tracking: Hungarian ID matching, ID issuance, ID masks, video tracks."""

import itertools

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from iai_jax import results as results_lib
from iai_jax import tracking


# ----------------------------------------------------------------- references
def brute_force_match(id_prob):
  """Best assignment by enumeration: classes < N-1 at most once, N-1 any times."""
  k, n = id_prob.shape
  best, best_total = None, -np.inf
  for choice in itertools.product(range(n), repeat=k):
    real = [c for c in choice if c != n - 1]
    if len(real) != len(set(real)):
      continue
    total = sum(id_prob[r, c] for r, c in enumerate(choice))
    if total > best_total:
      best, best_total = np.array(choice), total
  return best if best is not None else np.zeros((0,), int), best_total


class ReferenceTracker:
  """The issuance rules written out plainly, matching by enumeration."""

  def __init__(self, n):
    self.n = n
    self.issued = 0
    self.first = True

  def step(self, id_prob, keep):
    rows = [r for r in range(len(keep)) if keep[r]]
    if self.first:
      classes = [self.n - 1] * len(rows)
    else:
      classes = list(brute_force_match(id_prob[rows])[0])
    self.first = False
    before = self.issued
    ids = [-1] * len(keep)
    used = []
    for r, c in zip(rows, classes):
      if c == self.n - 1 or c >= before or c in used:
        if self.issued == self.n - 2:   # IDs 0..N-3 only
          continue
        c = self.issued
        self.issued += 1
      ids[r] = c
      used.append(c)
    return np.array(ids)


# ----------------------------------------------------------------- matching
def test_match_ids_equals_brute_force_on_random_cases():
  rng = np.random.default_rng(0)
  for _ in range(150):
    n = int(rng.integers(2, 6))
    k = int(rng.integers(0, 5))
    p = rng.random((k, n))
    if rng.random() < 0.3:   # peaked rows, like a trained ID head
      p = p ** 4
    got = tracking.match_ids(p)
    want, want_total = brute_force_match(p)
    assert got.shape == (k,)
    np.testing.assert_array_equal(got, want)
    real = got[got != n - 1]
    assert len(set(real.tolist())) == real.size
    if k:
      assert np.isclose(p[np.arange(k), got].sum(), want_total)


def test_match_ids_lets_every_detection_be_new():
  # All detections prefer "new" over any existing ID: all of them get it.
  p = np.full((6, 4), 0.05)
  p[:, 3] = 0.9
  np.testing.assert_array_equal(tracking.match_ids(p), [3] * 6)


def test_match_ids_resolves_a_contested_id():
  # Both want ID 0; the assignment maximising the sum gives it to row 1.
  p = np.array([[0.8, 0.0, 0.0, 0.75],
                [0.9, 0.0, 0.0, 0.1]])
  np.testing.assert_array_equal(tracking.match_ids(p), [3, 0])


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
  for _ in range(40):
    n = int(rng.integers(3, 6))
    tr, ref = tracking.IdTracker(n), ReferenceTracker(n)
    for _ in range(int(rng.integers(1, 7))):
      d = int(rng.integers(0, 5))
      p = rng.random((d, n)) ** 3
      keep = rng.random(d) < 0.8
      np.testing.assert_array_equal(tr.step(p, keep), ref.step(p, keep))
    assert tr.num_issued == ref.issued <= n - 2


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


def test_cap_issues_ids_below_n_minus_2_and_drops_later_new_instances():
  n = 5  # IDs 0, 1, 2 (N-2 = 3 identities); 3 is the overflow slot, 4 "new"
  tr = tracking.IdTracker(n)
  ids = tr.step(_onehot_prob([4, 4, 4, 4], n), None)
  np.testing.assert_array_equal(ids, [0, 1, 2, -1])
  assert tr.num_issued == 3 and tr.dropped == 1 and tr.new_instance
  # Later: the known IDs still match; the "new" one and the one pointing at
  # the never-issued slot N-2 are dropped, but a new instance did appear.
  ids = tr.step(_onehot_prob([2, 4, 3, 0], n), None)
  np.testing.assert_array_equal(ids, [2, -1, -1, 0])
  assert tr.new_instance and tr.dropped == 3 and tr.num_issued == 3
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
  assert tr.new_instance


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
def test_online_id_map_has_the_training_layout():
  """The online loop's ID label map (inference.id_map_from_detections) and
  its one-hot, as written into the memory: channel d = ID d, channel N =
  background, the same layout as training's targets.id_mask_from_map."""
  import jax
  from iai_jax import inference, targets
  n = 6
  masks = np.zeros((4, 5, 7), bool)
  masks[0, 0:2, 0:3] = True          # ID 3
  masks[1, 2:4, 2:6] = True          # ID 0
  masks[2, 4, :] = True              # no ID: ignored
  masks[3, 3:5, 6] = True            # ID 4 (= N-2, the largest allowed)
  ids = np.array([3, 0, -1, 4], np.int32)
  label = np.asarray(inference.id_map_from_detections(masks, ids, n))
  assert label.dtype == np.int32 and label.shape == (5, 7)
  assert label[0, 0] == 3 and label[1, 2] == 3 and label[2, 3] == 0
  assert label[3, 6] == 4 and label[4, 6] == 4
  assert label[4, 0] == n and label[2, 0] == n   # background is channel N
  onehot = np.asarray(jax.nn.one_hot(label, n + 1))
  ref = np.asarray(targets.id_mask_from_map(label[None], n))[0]
  np.testing.assert_array_equal(onehot, ref)
  np.testing.assert_array_equal(ref.argmax(-1), label)


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


def test_video_scores_are_averaged_over_all_frames_with_absent_as_zero():
  p = 3
  acc = tracking.VideoAccumulator(p, max_per_img=10)
  h, w = 6, 8
  masks = _frame_masks(2, h, w, [(0, 2, 0, 2), (3, 6, 4, 8)])
  # frame 0: ID 0 (class 1: 0.8), ID 2 (class 0: 0.2)
  acc.add_frame(np.array([0, 2]), np.array([[0.1, 0.8, 0.0], [0.2, 0.0, 0.0]]),
                masks)
  # frame 1: ID 0 again (class 1: 0.8, class 2: 0.4); one ignored detection
  acc.add_frame(np.array([-1, 0]), np.array([[0.9, 0.9, 0.9], [0.0, 0.8, 0.4]]),
                masks)
  # frame 2: nothing
  acc.add_frame(np.zeros((0,), int), np.zeros((0, p)), np.zeros((0, h, w), bool))
  # frame 3: ID 1 (class 2: 0.3)
  acc.add_frame(np.array([1]), np.array([[0.0, 0.0, 0.3]]), masks[1:])
  assert acc.num_frames == 4
  tracks = acc.finish()
  got = [(t['id'], t['label'], round(t['score'], 6)) for t in tracks]
  # means over 4 frames: ID0 c1 0.4, ID0 c2 0.1, ID1 c2 0.075, ID0 c0 0.025,
  # ID2 c0 0.05 (not above 0.05: out)
  assert got == [(0, 1, 0.4), (0, 2, 0.1), (1, 2, 0.075)]
  for t in tracks:
    assert len(t['segmentations']) == 4
    assert isinstance(t['score'], float)
  seg0 = tracks[0]['segmentations']
  assert seg0[2] is None and seg0[3] is None
  np.testing.assert_array_equal(results_lib.decode_mask(seg0[0]), masks[0])
  np.testing.assert_array_equal(results_lib.decode_mask(seg0[1]), masks[1])
  seg1 = tracks[2]['segmentations']
  assert seg1[:3] == [None, None, None]
  np.testing.assert_array_equal(results_lib.decode_mask(seg1[3]), masks[1])


def test_video_keeps_the_top_max_per_img_pairs():
  p = 4
  acc = tracking.VideoAccumulator(p, max_per_img=3)
  scores = np.array([[0.9, 0.3, 0.6, 0.0],
                     [0.2, 0.7, 0.0, 0.0],
                     [0.0, 0.0, 0.0, 0.5]])
  acc.add_frame(np.array([4, 2, 7]), scores, np.ones((3, 2, 2), bool))
  got = [(t['id'], t['label'], t['score']) for t in acc.finish()]
  assert got == [(4, 0, 0.9), (2, 1, 0.7), (4, 2, 0.6)]


def test_video_threshold_is_strict_and_configurable():
  acc = tracking.VideoAccumulator(1, max_per_img=5, score_thr=0.3)
  acc.add_frame(np.array([0, 1]), np.array([[0.3], [0.31]]),
                np.ones((2, 1, 1), bool))
  assert [t['id'] for t in acc.finish()] == [1]


def test_video_masks_callable_only_for_detections_with_ids():
  calls = []

  def masks(d):
    calls.append(d)
    return np.eye(3, dtype=bool)

  acc = tracking.VideoAccumulator(2, max_per_img=5)
  acc.add_frame(np.array([-1, 0, -1, 1]), np.full((4, 2), 0.5), masks)
  assert calls == [1, 3]
  tracks = acc.finish()
  assert len(tracks) == 4
  np.testing.assert_array_equal(
      results_lib.decode_mask(tracks[0]['segmentations'][0]), np.eye(3, dtype=bool))


def test_video_accumulator_checks_and_edge_cases():
  acc = tracking.VideoAccumulator(2, max_per_img=5)
  assert acc.finish() == []
  acc.add_frame(np.array([-1]), np.zeros((1, 2)), np.zeros((1, 2, 2), bool))
  assert acc.finish() == []   # frames but no IDs
  with pytest.raises(ValueError, match='twice'):
    acc.add_frame(np.array([3, 3]), np.zeros((2, 2)), np.zeros((2, 2, 2), bool))
  with pytest.raises(ValueError, match='class_scores'):
    acc.add_frame(np.array([0]), np.zeros((1, 3)), np.zeros((1, 2, 2), bool))
  acc.add_frame(np.array([0]), np.ones((1, 2)), np.zeros((1, 2, 2), bool))
  with pytest.raises(ValueError, match='size'):
    acc.add_frame(np.array([0]), np.ones((1, 2)), np.zeros((1, 3, 2), bool))
  acc.reset()
  assert acc.num_frames == 0 and acc.finish() == []


def test_tracker_and_accumulator_together():
  """A scripted 3-frame video: IDs persist, tracks collect the right masks."""
  n, p, h, w = 5, 2, 4, 4
  tr = tracking.IdTracker(n)
  acc = tracking.VideoAccumulator(p, max_per_img=10)
  a = _frame_masks(1, h, w, [(0, 2, 0, 2)])[0]
  b = _frame_masks(1, h, w, [(2, 4, 2, 4)])[0]
  frames = [
      (_onehot_prob([4, 4], n), [[0.9, 0.0], [0.0, 0.6]], [a, b]),
      (_onehot_prob([1, 0], n), [[0.0, 0.6], [0.9, 0.0]], [b, a]),
      (_onehot_prob([0], n), [[0.9, 0.0]], [a]),
  ]
  for prob, cls, ms in frames:
    ids = tr.step(prob, None)
    acc.add_frame(ids, np.array(cls), np.array(ms))
  tracks = acc.finish()
  assert [(t['id'], t['label']) for t in tracks] == [(0, 0), (1, 1)]
  assert np.isclose(tracks[0]['score'], 0.9) and np.isclose(tracks[1]['score'], 0.4)
  dec = lambda s: None if s is None else results_lib.decode_mask(s)
  np.testing.assert_array_equal(dec(tracks[0]['segmentations'][1]), a)
  np.testing.assert_array_equal(dec(tracks[1]['segmentations'][1]), b)
  assert tracks[1]['segmentations'][2] is None
