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

The rules are the authors' (zfonemore/IAI at 2691be9; ``head`` =
``mmdet/models/dense_heads/iai_condinst_head.py``, ``det`` =
``mmdet/models/detectors/iai_condinst.py``):

* The issued-ID counter restarts on a video's first frame (head L644-645),
  where every kept detection is new (head L737-738), in score order.
* Later frames: Hungarian assignment (``linear_sum_assignment`` of minus the
  matrix) of the kept detections (head L704-733 keep, L740-744) to the
  columns [the N ID probabilities, a zero column (the padding of head
  L876-877), K-1 copies of the "new" column N-1] (K kept detections).
* A detection is new when it is on the first frame or its column is not an
  ID issued before this frame (``id_pred >= curr_max_id``, head L748-754:
  the "new" column, an unissued ID, the zero column, a copy); it then takes
  the next ID. An ID already taken in this frame also takes the next ID
  (head L762-766).
* The cap: the counter is clamped to N-2 (head L759-760, L765-766). So IDs
  ``0..N-3`` are given one identity each; once they are used up every later
  new instance gets ID N-2 (they share it: in the ID mask its channel holds
  the last one's pixels), and the video's output masks exist only for IDs
  below the counter (det L261-273: ``idx < max_inst_id``), so ID N-2 never
  gets one.
* ``new_instance`` (a new instance appeared: the global memory gets this
  frame) is set by every detection that took the "new" path (head L755).
* Per video (det L283-296): each ID's class scores (class probability x
  centerness; zero in frames without the ID; the last detection of the
  frame with that ID wins) are averaged over all frames; the top
  ``max_per_img`` (ID, class) pairs are kept if their score is above 0.05.
  An ID's masks: null in the frames before it was issued, a (possibly
  empty) RLE from the frame it was issued on.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from scipy.optimize import linear_sum_assignment

from iai_jax.results import encode_mask


# ----------------------------------------------------------------- IDs
def match_ids(id_prob: np.ndarray) -> np.ndarray:
  """Hungarian assignment of detections to ID classes, the authors' way.

  Args:
    id_prob: (K, N) ID probabilities of K detections; column N-1 is "new".
  Returns:
    (K,) int64: the column each detection gets in the matrix [the N
    probabilities, a zero column, K-1 copies of column N-1] (total
    probability maximal; columns >= N-1 all mean "new").
  """
  id_prob = np.asarray(id_prob, np.float32)
  if id_prob.ndim != 2:
    raise ValueError(f'id_prob must be (K, N), got shape {id_prob.shape}')
  k, n = id_prob.shape
  if k == 0:
    return np.zeros((0,), np.int64)
  if not np.all(np.isfinite(id_prob)):
    raise ValueError('id_prob of kept detections must be finite')
  matrix = np.concatenate([id_prob, np.zeros((k, 1), np.float32),
                           np.repeat(id_prob[:, n - 1:], k - 1, axis=1)],
                          axis=1)
  rows, cols = linear_sum_assignment(-matrix)
  out = np.empty((k,), np.int64)
  out[rows] = cols
  return out


class _IdIssuer:
  """What both trackers share: the per-video counter and its cap."""

  def __init__(self, num_ids: int):
    if num_ids < 3:
      raise ValueError(f'num_ids (max_obj_num) must be >= 3, got {num_ids} '
                       '(IDs 0..N-2 are issued, N-1 means "new")')
    self.num_ids = int(num_ids)
    self.cap = self.num_ids - 2  # the counter never passes N-2

  def reset(self):
    """Starts a new video."""
    self.frames = 0
    self.num_issued = 0
    self.new_instance = False

  def issue(self) -> int:
    """The next ID (N-2 again once the counter is at its cap)."""
    i = self.num_issued
    self.num_issued = min(self.num_issued + 1, self.cap)
    return i


class IdTracker(_IdIssuer):
  """Assigns video-level IDs to a frame's detections (see the module doc).

  ``step(id_prob, keep)`` once per frame, in order; ``reset()`` before a new
  video. After a step, ``new_instance`` says whether a new instance appeared
  in that frame and ``num_issued`` is the ID counter (IDs below it have
  output masks).
  """

  def __init__(self, num_ids: int):
    super().__init__(num_ids)
    self.reset()

  def step(self, id_prob: np.ndarray, keep: np.ndarray | None = None
           ) -> np.ndarray:
    """IDs of one frame's detections.

    Args:
      id_prob: (D, N) float ID probabilities (sigmoid of the ID head), the
        detections in score order (new IDs are issued in this order).
      keep: (D,) bool, the detections that survived; None: all of them.
    Returns:
      (D,) int32 IDs in ``0..N-2``; -1 for detections not kept.
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
    first = self.frames == 0
    if first:
      self.num_issued = 0
      columns = np.full((rows.size,), self.num_ids - 1, np.int64)
    else:
      columns = match_ids(id_prob[rows])
    issued_before = self.num_issued
    ids = np.full((d,), -1, np.int32)
    taken = []
    new_instance = False
    for r, c in zip(rows, columns):
      c = int(c)
      if first or c >= issued_before:
        new_instance = True
        c = self.issue()
      if c in taken:
        c = self.issue()
      ids[r] = c
      taken.append(c)
    self.new_instance = new_instance
    self.frames += 1
    return ids

  def assign(self, id_prob: np.ndarray, masks: Any,
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
  * the cap is :class:`IdTracker`'s: once IDs ``0..N-3`` are used up, new
    instances share ID N-2 (which has no output masks).

  ``new_instance`` and ``num_issued`` mean what they mean for
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
      (D,) int32 IDs in ``0..N-2``; -1 for detections not kept.
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
      ids[r] = self.issue()
    tracked = np.flatnonzero(ids >= 0)
    self._prev_ids = ids[tracked].copy()
    self._prev_masks = masks[tracked].copy()
    self.new_instance = new_instance
    self.frames += 1
    return ids

  def assign(self, id_prob: np.ndarray | None, masks: Any,
             keep: np.ndarray | None = None) -> np.ndarray:
    """The online loop's call: :meth:`step` (the ID head is not used)."""
    del id_prob
    return self.step(np.asarray(masks), keep)


def make_tracker(config):
  """The ID tracker ``config.infer.tracker`` names, for ``config.model``."""
  e, n = config.infer, config.model.max_obj_num
  if e.tracker == 'id_head':
    return IdTracker(n)
  if e.tracker == 'mask_iou':
    return MaskIouTracker(n, e.mask_iou_threshold)
  raise ValueError(f'infer.tracker={e.tracker!r}: choose id_head or mask_iou')


# ----------------------------------------------------------------- videos
class VideoAccumulator:
  """Collects one video's per-frame results; ``finish()`` gives its tracks.

  Memory stays small for long videos: an (N, P) class-score sum and, per
  issued ID and frame, one compressed RLE.
  """

  def __init__(self, num_classes: int, num_ids: int, max_per_img: int,
               score_thr: float = 0.05):
    self.num_classes = int(num_classes)
    self.num_ids = int(num_ids)
    self.max_per_img = int(max_per_img)
    self.score_thr = float(score_thr)
    self.reset()

  def reset(self):
    """Starts a new video."""
    self._frames = 0
    self._sums = np.zeros((self.num_ids, self.num_classes), np.float64)
    self._masks: dict[int, list] = {}
    self._size = None

  @property
  def num_frames(self) -> int:
    return self._frames

  def add_frame(self, ids: np.ndarray, class_scores: np.ndarray,
                masks: np.ndarray | Callable[[int], np.ndarray],
                num_issued: int):
    """Adds the next frame.

    Args:
      ids: (D,) int IDs, -1 for detections without one.
      class_scores: (D, P) class probability x centerness.
      masks: (D, h, w) bool masks at the original frame size, or a callable
        ``masks(d) -> (h, w) bool`` (called only for detections with an ID).
      num_issued: the ID counter after this frame: IDs below it get a mask
        (empty when absent) in this frame, the others none.
    """
    ids = np.asarray(ids)
    class_scores = np.asarray(class_scores, np.float32)
    d = ids.shape[0] if ids.ndim == 1 else -1
    if ids.ndim != 1 or class_scores.shape != (d, self.num_classes):
      raise ValueError(f'ids must be (D,) and class_scores (D, '
                       f'{self.num_classes}), got {ids.shape} and '
                       f'{class_scores.shape}')
    present = np.flatnonzero(ids >= 0)
    if np.any(ids[present] >= self.num_ids):
      raise ValueError(f'IDs must be below {self.num_ids}: {ids.tolist()}')
    if not np.all(np.isfinite(class_scores[present])):
      raise ValueError('class scores must be finite')
    if not callable(masks):
      masks = np.asarray(masks)
      if masks.ndim != 3 or masks.shape[0] != d:
        raise ValueError(f'masks must be ({d}, h, w), got {masks.shape}')
    frame_scores = np.zeros((self.num_ids, self.num_classes), np.float32)
    frame_masks = {}
    for k in present:  # in score order: the last one with an ID wins
      i = int(ids[k])
      frame_scores[i] = class_scores[k]
      frame_masks[i] = masks(int(k)) if callable(masks) else masks[k]
    self._sums += frame_scores
    shape = None
    for m in frame_masks.values():
      shape = m.shape
    for i in range(min(int(num_issued), self.num_ids)):
      if i not in self._masks:
        self._masks[i] = [None] * self._frames
      if i in frame_masks:
        rle = encode_mask(frame_masks[i])
      else:
        if shape is None and self._size is None:
          raise ValueError('the frame size is not known yet: pass masks of '
                           'shape (D, h, w)')
        size = shape or tuple(self._size)
        rle = encode_mask(np.zeros(size, bool))
      if self._size is None:
        self._size = tuple(rle['size'])
      elif tuple(rle['size']) != self._size:
        raise ValueError(f'mask size {rle["size"]} differs from the video\'s '
                         f'earlier masks {list(self._size)}')
      self._masks[i].append(rle)
    self._frames += 1

  def finish(self) -> list[dict[str, Any]]:
    """The video's tracks, best first.

    Each ID's class scores are averaged over all frames of the video (zero
    where the ID is absent); the top ``max_per_img`` (ID, class) pairs with a
    score above ``score_thr`` (ties: lower ID, then lower class first) become
    tracks: dicts with 'id', 'label' (0-based class), 'score' (float) and
    'segmentations' (per frame: a compressed RLE with str counts from the
    frame the ID was issued on, None before; all None for an ID that never
    got masks). The same ID can give several tracks (one per class).
    """
    if self._frames == 0:
      return []
    mean = (self._sums / self._frames).astype(np.float32)
    flat = mean.reshape(-1)
    order = np.argsort(-flat, kind='stable')[:self.max_per_img]
    tracks = []
    for o in order:
      if not flat[o] > self.score_thr:
        continue
      i, label = divmod(int(o), self.num_classes)
      segs = self._masks.get(i, [None] * self._frames)
      tracks.append({'id': i, 'label': label, 'score': float(flat[o]),
                     'segmentations': list(segs)})
    return tracks
