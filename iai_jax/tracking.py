"""Host-side (numpy / scipy) parts of the online inference.

* :class:`IdTracker` gives each kept detection of a frame an ID from the ID
  head's probabilities (Hungarian assignment with "new" columns);
* :class:`MaskIouTracker` is the tracking-by-detection baseline of the
  ablations (``infer.tracker='mask_iou'``): IDs from matching each
  detection's mask to the previous frame's tracked masks by mask IoU;
* :func:`make_tracker` picks one of them from the config (both have
  ``assign(id_prob, masks, keep)``, what the online loop calls);
* :class:`VideoAccumulator` collects a video's per-frame class scores and
  masks (stored as RLE at once) and picks the video's tracks at the end.

ID slots (``N`` = ``model.max_obj_num``): the ID head has N outputs; class
``N-1`` means "a new instance", classes ``0..N-2`` name instances already
seen. In the ID mask channel ``d`` holds the pixels of ID ``d`` and channel
``N`` the background.

The rules follow the authors' evaluation code (zfonemore/IAI at 2691be9;
``head`` = ``mmdet/models/dense_heads/iai_condinst_head.py``, ``det`` =
``mmdet/models/detectors/iai_condinst.py``):

* The issued-ID counter restarts on a video's first frame (head L644-645),
  where every kept detection is new (head L737-738), in score order.
* Later frames: Hungarian assignment (``linear_sum_assignment`` on minus the
  ID probabilities) of the kept detections (head L704-733 keep, L740-744)
  to the N ID columns plus copies of the "new" column N-1 (there: a zero
  column, from the padding at head L876-877, plus D-1 copies, so D "new"
  columns in all; here D copies - the optimum is the same).
* A detection is new when it is on the first frame or its column is not an
  ID issued before this frame (``id_pred >= curr_max_id``, head L748-754:
  the "new" column, an unissued ID, the padding / copies); it then takes the
  next ID. An ID already taken in this frame also takes the next ID (head
  L762-766; with unique Hungarian columns this only happens at the cap).
* The cap: the counter is clamped to N-2 (head L759-760, L765-766), and the
  video's output masks exist only for IDs below the counter (det L261-273:
  ``idx < max_inst_id``). So IDs ``0..N-3`` (N-2 identities: 18 for
  YouTube-VIS, 23 for OVIS) are real; every later new instance is given the
  shared ID N-2, which is written into the memory's ID mask but never gets an
  output mask. Here such detections are dropped instead (ID -1: no output,
  not in the ID mask), as the design asks.
* ``new_instance`` (a new instance appeared: the global memory gets this
  frame) is set by every detection that took the "new" path, including ones
  dropped at the cap (head L755).
* Per video (det L283-296): each ID's class scores (class probability x
  centerness; zero in frames without the ID) are averaged over all frames;
  the top ``max_per_img`` (ID, class) pairs are kept if their score is above
  0.05.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from scipy.optimize import linear_sum_assignment

from iai_jax.results import encode_mask


# ----------------------------------------------------------------- IDs
def match_ids(id_prob: np.ndarray) -> np.ndarray:
  """Hungarian assignment of detections to ID classes.

  Args:
    id_prob: (K, N) ID probabilities of K detections; column N-1 is "new".
  Returns:
    (K,) int64: the ID class given to each detection, N-1 for "new". The
    total probability is maximal over all assignments in which every class
    ``0..N-2`` goes to at most one detection and any number of detections
    are "new" (the cost matrix has K extra copies of the "new" column).
  """
  id_prob = np.asarray(id_prob, np.float64)
  if id_prob.ndim != 2:
    raise ValueError(f'id_prob must be (K, N), got shape {id_prob.shape}')
  k, n = id_prob.shape
  if k == 0:
    return np.zeros((0,), np.int64)
  if not np.all(np.isfinite(id_prob)):
    raise ValueError('id_prob of kept detections must be finite')
  scores = np.concatenate([id_prob, np.repeat(id_prob[:, n - 1:], k, axis=1)],
                          axis=1)
  rows, cols = linear_sum_assignment(scores, maximize=True)
  out = np.empty((k,), np.int64)
  out[rows] = np.minimum(cols, n - 1)
  return out


class _IdIssuer:
  """What both trackers share: the ID cap and the per-video counters."""

  def __init__(self, num_ids: int):
    if num_ids < 2:
      raise ValueError(f'num_ids (max_obj_num) must be >= 2, got {num_ids} '
                       '(and >= 3 for any ID to be issued: IDs stop at N-2)')
    self.num_ids = int(num_ids)
    self.max_issued = self.num_ids - 2  # IDs 0..N-3 can be issued

  def reset(self):
    """Starts a new video."""
    self.frames = 0
    self.num_issued = 0
    self.new_instance = False
    self.dropped = 0


class IdTracker(_IdIssuer):
  """Assigns video-level IDs to a frame's detections (see the module doc).

  ``step(id_prob, keep)`` once per frame, in order; ``reset()`` before a new
  video. After a step, ``new_instance`` says whether a new instance appeared
  in that frame (including one dropped at the cap), ``num_issued`` how many
  IDs the video has given out (at most N-2) and ``dropped`` how many new
  instances the video had to drop.
  """

  def __init__(self, num_ids: int):
    super().__init__(num_ids)
    self.new_class = self.num_ids - 1   # the ID head's "new instance" class
    self.reset()

  def step(self, id_prob: np.ndarray, keep: np.ndarray | None = None
           ) -> np.ndarray:
    """IDs of one frame's detections.

    Args:
      id_prob: (D, N) float ID probabilities (sigmoid of the ID head), the
        detections in score order (new IDs are issued in this order).
      keep: (D,) bool, the detections that survived; None: all of them.
    Returns:
      (D,) int32 IDs in ``0..N-3``; -1 for detections not kept and for new
      instances dropped because the video's IDs are used up.
    """
    id_prob = np.asarray(id_prob)
    if id_prob.ndim != 2 or id_prob.shape[1] != self.num_ids:
      raise ValueError(f'id_prob must be (D, {self.num_ids}), got shape '
                       f'{id_prob.shape}')
    d = id_prob.shape[0]
    keep = np.ones((d,), bool) if keep is None else np.asarray(keep, bool)
    if keep.shape != (d,):
      raise ValueError(f'keep must be ({d},), got shape {keep.shape}')
    rows = np.flatnonzero(keep)
    if self.frames == 0:
      classes = np.full((rows.size,), self.new_class, np.int64)
    else:
      classes = match_ids(id_prob[rows])
    issued_before = self.num_issued
    ids = np.full((d,), -1, np.int32)
    taken = set()
    new_instance = False
    for r, c in zip(rows, classes):
      c = int(c)
      if c >= issued_before or c in taken:
        new_instance = True
        if self.num_issued >= self.max_issued:
          self.dropped += 1
          continue
        c = self.num_issued
        self.num_issued += 1
      ids[r] = c
      taken.add(c)
    self.new_instance = new_instance
    self.frames += 1
    return ids

  def assign(self, id_prob: np.ndarray, masks: np.ndarray | None,
             keep: np.ndarray | None = None) -> np.ndarray:
    """The online loop's call: :meth:`step` (the masks are not used)."""
    del masks
    return self.step(id_prob, keep)


def mask_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(K, H, W) and (M, H, W) bool masks -> (K, M) IoU (0 where both empty)."""
  a = np.asarray(a, bool).reshape(len(a), -1).astype(np.float32)
  b = np.asarray(b, bool).reshape(len(b), -1).astype(np.float32)
  inter = a @ b.T
  union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
  return np.where(union > 0, inter / np.maximum(union, 1.0), 0.0)


class MaskIouTracker(_IdIssuer):
  """Tracking-by-detection baseline: IDs by mask IoU with the last frame.

  ``step(masks, keep)`` once per frame, in order; ``reset()`` before a new
  video. The ID head is not used. The rules:

  * the kept detections of a frame are matched one-to-one to the tracks
    present in the previous frame (their masks there) by the Hungarian
    assignment maximising the total mask IoU over the pairs with IoU >=
    ``iou_threshold``; a matched detection continues that track's ID;
  * every other kept detection (all of them on a video's first frame) is a
    new instance and takes the next ID, in score order;
  * only the previous frame counts: a track that is missing in one frame
    (missed, fully occluded) is ended, and the object gets a new ID when it
    is detected again;
  * the cap is :class:`IdTracker`'s: IDs ``0..N-3``; later new instances are
    dropped (ID -1) and counted in ``dropped``.

  ``new_instance``, ``num_issued`` and ``dropped`` mean what they mean for
  :class:`IdTracker` (so the memory write of the online loop works the same).
  """

  def __init__(self, num_ids: int, iou_threshold: float = 0.3):
    super().__init__(num_ids)
    if not 0.0 <= iou_threshold <= 1.0:
      raise ValueError(f'iou_threshold must be in [0, 1], got {iou_threshold}')
    self.iou_threshold = float(iou_threshold)
    self.reset()

  def reset(self):
    """Starts a new video."""
    super().reset()
    self._prev_ids = np.zeros((0,), np.int32)
    self._prev_masks = None

  def step(self, masks: np.ndarray, keep: np.ndarray | None = None
           ) -> np.ndarray:
    """IDs of one frame's detections.

    Args:
      masks: (D, H, W) bool masks of the detections in score order, all
        frames of a video at the same resolution.
      keep: (D,) bool, the detections that survived; None: all of them.
    Returns:
      (D,) int32 IDs in ``0..N-3``; -1 for detections not kept and for new
      instances dropped because the video's IDs are used up.
    """
    masks = np.asarray(masks, bool)
    if masks.ndim != 3:
      raise ValueError(f'masks must be (D, H, W), got shape {masks.shape}')
    d = masks.shape[0]
    keep = np.ones((d,), bool) if keep is None else np.asarray(keep, bool)
    if keep.shape != (d,):
      raise ValueError(f'keep must be ({d},), got shape {keep.shape}')
    if (self._prev_masks is not None
        and self._prev_masks.shape[1:] != masks.shape[1:]):
      raise ValueError(f'mask size {masks.shape[1:]} differs from the '
                       f'previous frame\'s {self._prev_masks.shape[1:]}')
    rows = np.flatnonzero(keep)
    ids = np.full((d,), -1, np.int32)
    if rows.size and self._prev_ids.size:
      iou = mask_iou_matrix(masks[rows], self._prev_masks)
      ok = iou >= self.iou_threshold
      if self.iou_threshold == 0.0:
        ok &= iou > 0  # never continue a track without any overlap
      r, c = linear_sum_assignment(np.where(ok, iou, 0.0), maximize=True)
      for i, j in zip(r, c):
        if ok[i, j]:
          ids[rows[i]] = self._prev_ids[j]
    new_instance = False
    for r in rows:
      if ids[r] >= 0:
        continue
      new_instance = True
      if self.num_issued >= self.max_issued:
        self.dropped += 1
        continue
      ids[r] = self.num_issued
      self.num_issued += 1
    tracked = np.flatnonzero(ids >= 0)
    self._prev_ids = ids[tracked].copy()
    self._prev_masks = masks[tracked].copy()
    self.new_instance = new_instance
    self.frames += 1
    return ids

  def assign(self, id_prob: np.ndarray | None, masks: np.ndarray,
             keep: np.ndarray | None = None) -> np.ndarray:
    """The online loop's call: :meth:`step` (the ID head is not used)."""
    del id_prob
    return self.step(masks, keep)


def make_tracker(config):
  """The ID tracker ``config.infer.tracker`` names, for ``config.model``."""
  e, n = config.infer, config.model.max_obj_num
  kind = e.get('tracker', 'id_head')
  if kind == 'id_head':
    return IdTracker(n)
  if kind == 'mask_iou':
    return MaskIouTracker(n, e.get('mask_iou_threshold', 0.3))
  raise ValueError(f'infer.tracker={kind!r}: choose id_head or mask_iou')


# ----------------------------------------------------------------- videos
class VideoAccumulator:
  """Collects one video's per-frame results; ``finish()`` gives its tracks.

  Memory stays small for long videos: per ID a (P,) class-score sum and one
  compressed RLE per frame where the ID is present.
  """

  def __init__(self, num_classes: int, max_per_img: int,
               score_thr: float = 0.05):
    self.num_classes = int(num_classes)
    self.max_per_img = int(max_per_img)
    self.score_thr = float(score_thr)
    self.reset()

  def reset(self):
    """Starts a new video."""
    self._frames = 0
    self._sums: dict[int, np.ndarray] = {}
    self._masks: dict[int, dict[int, dict[str, Any]]] = {}
    self._size = None

  @property
  def num_frames(self) -> int:
    return self._frames

  def add_frame(self, ids: np.ndarray, class_scores: np.ndarray,
                masks: np.ndarray | Callable[[int], np.ndarray]):
    """Adds the next frame.

    Args:
      ids: (D,) int IDs, -1 for detections to ignore (not kept, dropped).
      class_scores: (D, P) class probability x centerness.
      masks: (D, h, w) bool masks at the original frame size, or a callable
        ``masks(d) -> (h, w) bool`` (called only for detections with an ID).
    """
    ids = np.asarray(ids)
    class_scores = np.asarray(class_scores, np.float64)
    d = ids.shape[0] if ids.ndim == 1 else -1
    if ids.ndim != 1 or class_scores.shape != (d, self.num_classes):
      raise ValueError(f'ids must be (D,) and class_scores (D, '
                       f'{self.num_classes}), got {ids.shape} and '
                       f'{class_scores.shape}')
    present = np.flatnonzero(ids >= 0)
    if len(set(ids[present].tolist())) != present.size:
      raise ValueError(f'an ID appears twice in one frame: {ids.tolist()}')
    if not np.all(np.isfinite(class_scores[present])):
      raise ValueError('class scores must be finite')
    if not callable(masks):
      masks = np.asarray(masks)
      if masks.ndim != 3 or masks.shape[0] != d:
        raise ValueError(f'masks must be ({d}, h, w), got {masks.shape}')
    for k in present:
      i = int(ids[k])
      if i not in self._sums:
        self._sums[i] = np.zeros((self.num_classes,), np.float64)
        self._masks[i] = {}
      self._sums[i] += class_scores[k]
      rle = encode_mask(masks(int(k)) if callable(masks) else masks[k])
      if self._size is None:
        self._size = rle['size']
      elif rle['size'] != self._size:
        raise ValueError(f'mask size {rle["size"]} differs from the video\'s '
                         f'earlier masks {self._size}')
      self._masks[i][self._frames] = rle
    self._frames += 1

  def finish(self) -> list[dict[str, Any]]:
    """The video's tracks, best first.

    Each ID's class scores are averaged over all frames of the video (zero
    where the ID is absent); the top ``max_per_img`` (ID, class) pairs with a
    score above ``score_thr`` (ties: lower ID, then lower class first) become
    tracks: dicts with 'id', 'label' (0-based class), 'score' (float) and
    'segmentations' (one compressed RLE with str counts per frame, None where
    the ID is absent). The same ID can give several tracks (one per class).
    """
    if self._frames == 0 or not self._sums:
      return []
    order_ids = sorted(self._sums)
    mean = np.stack([self._sums[i] for i in order_ids]) / self._frames
    flat = mean.reshape(-1)
    order = np.argsort(-flat, kind='stable')[:self.max_per_img]
    tracks = []
    for o in order:
      if not flat[o] > self.score_thr:
        break
      row, label = divmod(int(o), self.num_classes)
      i = order_ids[row]
      per_frame = self._masks[i]
      tracks.append({'id': i, 'label': label, 'score': float(flat[o]),
                     'segmentations': [per_frame.get(f)
                                       for f in range(self._frames)]})
    return tracks
