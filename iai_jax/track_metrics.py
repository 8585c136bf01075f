"""Association metrics on mask tracks: HOTA, IDF1 and CLEAR (MOTA, ID switches).

Computes, from YouTube-VIS / OVIS ground truth and results (the formats of
:mod:`iai_jax.evaluate`), the numbers that the ``trackeval`` package (PyPI
``trackeval`` 1.3.0, the TrackEval code of Luiten et al.) gives with its
``YouTubeVIS`` dataset class and its ``HOTA``, ``Identity``, ``CLEAR`` and
``Count`` metrics.  The tests compare every field with ``trackeval`` to 1e-9.
Only numpy, scipy and pycocotools are used.

How the YouTube-VIS class evaluates (and so how this module does):

* every GT category is a class, evaluated on its own: a class sees only the
  GT tracks and the result entries with that ``category_id``.  Result entries
  whose category is not a GT category are dropped.
* a *sequence* is a GT video; its number of frames is ``len(file_names)``
  (``length`` if a video has no ``file_names``).  Per frame, a detection is
  a track whose segmentation in that frame is truthy (not null / empty).
* every result entry is one tracker ID; there is no score threshold (all
  entries count, whatever their score; ``score_threshold`` here is an
  optional extra, off by default).
* similarity = per-frame mask IoU from ``pycocotools.mask.iou`` on the RLEs.
* metrics are summed over sequences per class (``combine_sequences``), then
  combined over classes in two ways: class-averaged (TrackEval's
  ``cls_comb_cls_av``: counts summed, every ratio field the plain mean over
  classes) and detection-averaged (``cls_comb_det_av``: counts pooled over
  classes, ratios computed from the pooled counts).

Headline numbers (the flat keys of :func:`evaluate_tracks`'s result,
``HEADLINE_KEYS``): the class-averaged ones, i.e. TrackEval's
``cls_comb_cls_av`` row: the per-category mean, like VIS AP and like the
class-averaged mHOTA / mIDF1 / mMOTA of multi-class tracking benchmarks
(BDD100K).  VIS papers that report HOTA follow no single convention, so the
detection-averaged row (``cls_comb_det_av``, which pools all categories'
detections) is always reported next to it; mind quirk Q4 below when a split
lacks some GT categories.  HOTA, DetA, AssA, LocA (and DetRe, DetPr, AssRe,
AssPr, OWTA) are, as TrackEval prints them, the mean over the 19
localisation thresholds alpha = 0.05 .. 0.95; the per-alpha arrays and
HOTA(0), LocA(0), HOTALocA(0) are in the details.

VIS results files made for AP often hold many low-score entries per video;
every one of them is a tracker ID here (false positives where they match
nothing) unless ``score_threshold`` drops them.

TrackEval behaviour that is matched here (quirks included):

* Q1 crowd GT (``iscrowd``) is an ordinary GT track: the YouTube-VIS class
  only uses ``iscrowd`` for Track mAP, so for HOTA / IDF1 / CLEAR a crowd
  track must be tracked like any other object.
* Q2 one result entry = one tracker ID in one class.  A track that a method
  reports several times with different categories (top-k classes per track)
  is several IDs: the copies in the wrong classes are false positives there,
  and two copies in the same class compete for the same GT.
* Q3 order: per frame the similarity rows are the class's GT tracks in
  annotation-file order and the columns its results in results-file order
  (GT IDs are numbered by ascending annotation id, tracker IDs by file
  order).  This per-frame order decides ties in the Hungarian matchings
  (HOTA and CLEAR, per frame; scipy's ``linear_sum_assignment``), so it is
  kept exactly: e.g. two results equal to the GT in a frame, CLEAR takes the
  earlier one.  (The numbering of the IDs itself changes no result.)  Tracks
  without any non-null frame in a class are not IDs at all.
* Q4 classes without GT and without results still take part in the
  class average with HOTA = DetA = AssA = IDF1 = MOTA = 0 and LocA = 1
  (TrackEval never passes ``ignore_empty_classes``); categories listed in the
  GT but absent from a split pull the class-averaged numbers down.  The
  detection-averaged numbers are unaffected.
* Q5 LocA of a class/sequence without any match is 1 (``max(1e-10, 0) /
  max(1e-10, 0)``); LocA is combined over sequences / classes weighted by
  the true-positive count, AssA/AssRe/AssPr likewise (per alpha).
* Q6 thresholds: HOTA matches at ``sim >= alpha - eps``, CLEAR at
  ``sim >= 0.5 - eps`` (eps = float64 machine epsilon), Identity at
  ``sim >= 0.5`` exactly; alpha = ``np.arange(0.05, 0.99, 0.05)``.
* Q7 CLEAR "previous frame" (used for the 1000x bonus that keeps last
  frame's pairs, and for Frag) only advances on frames where the class has
  both a GT and a tracker detection.  A frame without any tracker detection
  (or without any GT) of the class does not break a track: an object tracked
  before and after such a frame has no fragmentation, but the same object
  with an unrelated detection somewhere in that frame has Frag 1.  ID
  switches compare with the last tracker ID matched to the GT at any earlier
  time.
* Q8 CLEAR ``CLR_Frames`` counts a sequence's frames only for classes where
  that sequence has both GT and tracker detections; the detection average
  sums it over classes, so its ``FP_per_frame`` divides by frames x classes.
  MT / PT / ML: tracked ratio > 0.8 / >= 0.2 / rest; a class-sequence
  without tracker detections makes all its GT IDs ML.  MOTAL uses
  ``log10(IDSW)`` (``IDSW`` itself when 0).
* Q9 class average of CLEAR / Identity / HOTA: integer fields (TP, FN, IDSW,
  Frag, MT, ...) are summed over classes; every float field, including
  ``MOTP_sum``, ``HOTA(0)`` and the per-alpha arrays, is the mean over the
  per-class values (HOTA is not recomputed from the averaged DetA / AssA).
* Q10 sequences are combined in the order of their sorted names (the first
  path component of ``file_names[0]``), classes in GT ``categories`` order,
  as TrackEval sums them (this only moves the last bits of a float).

Where this module differs from ``trackeval`` (all are inputs that
``trackeval`` 1.3.0 cannot read or gets wrong; the tests avoid them):

* GT segmentations may be compressed RLE, polygons or uncompressed RLE (like
  :mod:`iai_jax.evaluate`); ``trackeval`` only reads uncompressed RLE
  (``frPyObjects`` fails on the others).
* a segmentations list shorter than the video counts the missing frames as
  absent (``trackeval`` raises ``IndexError``).
* masks of different sizes in one frame raise :class:`EvaluationError`
  (pycocotools gives IoU -1 and ``trackeval`` fails an assertion).
* every video / category is evaluated on its own even when two videos share
  the first ``file_names`` folder or two categories share a name
  (``trackeval`` keys both by name and silently evaluates one of them);
  repeated category names get ``' (id N)'`` appended, as in
  :func:`iai_jax.evaluate.per_category_ap`.
* results for videos that are not in the GT, and malformed entries, raise
  :class:`EvaluationError` (as for AP); ``trackeval`` ignores such videos.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

from iai_jax.vis_inputs import EvaluationError, _parse_gt, _parse_results

# Same construction as TrackEval's, so the alphas are bit-identical.
ALPHAS = np.arange(0.05, 0.99, 0.05)
MATCH_THRESHOLD = 0.5   # Identity and CLEAR
_EPS = np.finfo(float).eps

HOTA_ARRAY_FIELDS = ('HOTA', 'DetA', 'AssA', 'DetRe', 'DetPr', 'AssRe',
                     'AssPr', 'LocA', 'OWTA')
HOTA_COUNT_FIELDS = ('HOTA_TP', 'HOTA_FN', 'HOTA_FP')
HOTA_FLOAT_FIELDS = ('HOTA(0)', 'LocA(0)', 'HOTALocA(0)')
IDENTITY_COUNT_FIELDS = ('IDTP', 'IDFN', 'IDFP')
IDENTITY_FLOAT_FIELDS = ('IDF1', 'IDR', 'IDP')
CLEAR_COUNT_FIELDS = ('CLR_TP', 'CLR_FN', 'CLR_FP', 'IDSW', 'MT', 'PT', 'ML',
                      'Frag', 'CLR_Frames')
CLEAR_FLOAT_FIELDS = ('MOTA', 'MOTP', 'MODA', 'CLR_Re', 'CLR_Pr', 'MTR', 'PTR',
                      'MLR', 'sMOTA', 'CLR_F1', 'FP_per_frame', 'MOTAL',
                      'MOTP_sum')
COUNT_FIELDS = ('Dets', 'GT_Dets', 'IDs', 'GT_IDs')

# Flat keys of evaluate_tracks()'s result (class-averaged values).
HEADLINE_KEYS = {
    'HOTA': ('HOTA', 'DetA', 'AssA', 'LocA'),
    'Identity': ('IDF1', 'IDP', 'IDR'),
    'CLEAR': ('MOTA', 'MOTP', 'IDSW', 'Frag'),
}
METRIC_FAMILIES = ('HOTA', 'Identity', 'CLEAR')


# ---------------------------------------------------------------- sequences


@dataclasses.dataclass
class _Sequence:
  """One (video, class): per frame the present IDs and their similarities."""
  num_frames: int
  gt_ids: list          # per frame: int array of GT IDs (0..num_gt_ids-1)
  tracker_ids: list     # per frame: int array of tracker IDs
  similarity: list      # per frame: (len(gt_ids[t]), len(tracker_ids[t]))
  num_gt_ids: int
  num_tracker_ids: int
  num_gt_dets: int
  num_tracker_dets: int


def _frame_ious(gts, dts, label):
  """pycocotools IoU matrix (len(gts), len(dts)) of one frame's RLEs."""
  if not gts or not dts:
    return np.zeros((len(gts), len(dts)))
  iou = np.asarray(mask_utils.iou(gts, dts, [0] * len(dts)), np.float64)
  if (iou < 0).any():
    raise EvaluationError(
        f'{label}: a result mask and a GT mask of this frame differ in size',
        'results')
  return iou.reshape(len(gts), len(dts))


def _build_sequence(num_frames, gts, dts, vid):
  """gts: GT tracks in annotation-file order; dts: results in file order."""
  gt_present = [[f < len(g.seq) and g.seq[f] is not None for g in gts]
                for f in range(num_frames)]
  dt_present = [[f < len(d.seq) and d.seq[f] is not None for d in dts]
                for f in range(num_frames)]
  gt_seen = sorted({gts[i].ann_id for row in gt_present
                    for i, p in enumerate(row) if p})
  gt_rank = {a: k for k, a in enumerate(gt_seen)}
  dt_seen = sorted({i for row in dt_present for i, p in enumerate(row) if p})
  dt_rank = {i: k for k, i in enumerate(dt_seen)}
  gt_ids, tracker_ids, similarity = [], [], []
  for f in range(num_frames):
    gi = [i for i, p in enumerate(gt_present[f]) if p]
    di = [i for i, p in enumerate(dt_present[f]) if p]
    ids = [gts[i].ann_id for i in gi]
    if len(set(ids)) != len(ids):
      raise EvaluationError(
          f'video {vid}: GT annotation id repeated in frame {f}', 'gt')
    gt_ids.append(np.array([gt_rank[a] for a in ids], np.int64))
    tracker_ids.append(np.array([dt_rank[i] for i in di], np.int64))
    similarity.append(_frame_ious([gts[i].seq[f] for i in gi],
                                  [dts[i].seq[f] for i in di],
                                  f'video {vid} frame {f}'))
  return _Sequence(
      num_frames=num_frames, gt_ids=gt_ids, tracker_ids=tracker_ids,
      similarity=similarity, num_gt_ids=len(gt_seen),
      num_tracker_ids=len(dt_seen),
      num_gt_dets=sum(len(g) for g in gt_ids),
      num_tracker_dets=sum(len(d) for d in tracker_ids))


def _num_frames(video, tracks):
  names = video.get('file_names')
  if isinstance(names, list) and names:
    return len(names)
  if isinstance(video.get('length'), int) and video['length'] >= 0:
    return video['length']
  return max((len(t.seq) for t in tracks), default=0)


def _sequence_name(video):
  names = video.get('file_names')
  if isinstance(names, list) and names and isinstance(names[0], str):
    return names[0].split('/')[0]
  return str(video['id'])


# ---------------------------------------------------------------- HOTA


def _hota_sequence(s: _Sequence) -> dict:
  """Per-sequence HOTA counts and per-alpha AssA/AssRe/AssPr/LocA."""
  n_alpha = len(ALPHAS)
  tp, fn, fp = np.zeros(n_alpha), np.zeros(n_alpha), np.zeros(n_alpha)
  res = {'HOTA_TP': tp, 'HOTA_FN': fn, 'HOTA_FP': fp,
         'AssA': np.zeros(n_alpha), 'AssRe': np.zeros(n_alpha),
         'AssPr': np.zeros(n_alpha), 'LocA': np.ones(n_alpha)}
  if s.num_tracker_dets == 0:
    fn += s.num_gt_dets
    return res
  if s.num_gt_dets == 0:
    fp += s.num_tracker_dets
    return res

  # Global soft alignment between every GT ID and tracker ID: per frame each
  # pair adds its IoU divided by the "union" of the pair's similarity row
  # and column, then a Jaccard over the two IDs' detection counts.
  n_g, n_t = s.num_gt_ids, s.num_tracker_ids
  soft = np.zeros((n_g, n_t))
  gt_count, tr_count = np.zeros(n_g), np.zeros(n_t)
  for g, d, sim in zip(s.gt_ids, s.tracker_ids, s.similarity):
    denom = sim.sum(0)[None, :] + sim.sum(1)[:, None] - sim
    ok = denom > _EPS
    frac = np.zeros_like(sim)
    frac[ok] = sim[ok] / denom[ok]
    soft[np.ix_(g, d)] += frac
    gt_count[g] += 1
    tr_count[d] += 1
  align = soft / (gt_count[:, None] + tr_count[None, :] - soft)

  matches = np.zeros((n_alpha, n_g, n_t))
  loc_sum = np.zeros(n_alpha)
  thresholds = ALPHAS - _EPS
  for g, d, sim in zip(s.gt_ids, s.tracker_ids, s.similarity):
    if len(g) == 0 or len(d) == 0:
      fn += len(g)
      fp += len(d)
      continue
    rows, cols = linear_sum_assignment(-(align[np.ix_(g, d)] * sim))
    matched_sim = sim[rows, cols]
    hit = matched_sim[None, :] >= thresholds[:, None]       # (alpha, pairs)
    n_hit = hit.sum(1)
    tp += n_hit
    fn += len(g) - n_hit
    fp += len(d) - n_hit
    loc_sum += np.where(hit, matched_sim[None, :], 0.0).sum(1)
    matches[:, g[rows], d[cols]] += hit

  both = gt_count[:, None] + tr_count[None, :]
  for a in range(n_alpha):
    m = matches[a]
    norm = max(1.0, tp[a])
    res['AssA'][a] = np.sum(m * (m / np.maximum(1, both - m))) / norm
    res['AssRe'][a] = np.sum(m * (m / np.maximum(1, gt_count[:, None]))) / norm
    res['AssPr'][a] = np.sum(m * (m / np.maximum(1, tr_count[None, :]))) / norm
  res['LocA'] = np.maximum(1e-10, loc_sum) / np.maximum(1e-10, tp)
  return res


def _hota_finish(res: dict) -> dict:
  tp, fn, fp = res['HOTA_TP'], res['HOTA_FN'], res['HOTA_FP']
  res['DetRe'] = tp / np.maximum(1, tp + fn)
  res['DetPr'] = tp / np.maximum(1, tp + fp)
  res['DetA'] = tp / np.maximum(1, tp + fn + fp)
  res['HOTA'] = np.sqrt(res['DetA'] * res['AssA'])
  res['OWTA'] = np.sqrt(res['DetRe'] * res['AssA'])
  res['HOTA(0)'] = res['HOTA'][0]
  res['LocA(0)'] = res['LocA'][0]
  res['HOTALocA(0)'] = res['HOTA(0)'] * res['LocA(0)']
  return res


def _hota_pool(parts: list) -> dict:
  """Sequences -> class, or classes -> detection average: pooled counts."""
  res = {f: _sum(p[f] for p in parts) for f in HOTA_COUNT_FIELDS}
  norm = np.maximum(1.0, res['HOTA_TP'])
  for f in ('AssRe', 'AssPr', 'AssA'):
    res[f] = _sum(p[f] * p['HOTA_TP'] for p in parts) / norm
  loc = _sum(p['LocA'] * p['HOTA_TP'] for p in parts)
  res['LocA'] = np.maximum(1e-10, loc) / np.maximum(1e-10, res['HOTA_TP'])
  return _hota_finish(res)


# ---------------------------------------------------------------- Identity


def _identity_sequence(s: _Sequence) -> dict:
  """IDTP = the largest number of frames a one-to-one GT-ID / tracker-ID
  pairing agrees on (IoU >= 0.5); the rest of the GT / tracker detections
  are IDFN / IDFP.  (TrackEval solves the equivalent square min-cost
  problem on IDFN + IDFP; its totals do not depend on ties.)"""
  idtp = 0
  if s.num_tracker_dets and s.num_gt_dets:
    agree = np.zeros((s.num_gt_ids, s.num_tracker_ids))
    for g, d, sim in zip(s.gt_ids, s.tracker_ids, s.similarity):
      gi, di = np.nonzero(sim >= MATCH_THRESHOLD)
      agree[g[gi], d[di]] += 1
    rows, cols = linear_sum_assignment(agree, maximize=True)
    idtp = int(agree[rows, cols].sum())
  return {'IDTP': idtp, 'IDFN': s.num_gt_dets - idtp,
          'IDFP': s.num_tracker_dets - idtp}


def _identity_finish(res: dict) -> dict:
  tp, fn, fp = res['IDTP'], res['IDFN'], res['IDFP']
  res['IDR'] = tp / np.maximum(1.0, tp + fn)
  res['IDP'] = tp / np.maximum(1.0, tp + fp)
  res['IDF1'] = tp / np.maximum(1.0, tp + 0.5 * fp + 0.5 * fn)
  return res


def _identity_pool(parts: list) -> dict:
  return _identity_finish(
      {f: _sum(p[f] for p in parts) for f in IDENTITY_COUNT_FIELDS})


# ---------------------------------------------------------------- CLEAR


def _clear_sequence(s: _Sequence) -> dict:
  res = dict.fromkeys(CLEAR_COUNT_FIELDS, 0)
  res['MOTP_sum'] = 0.0
  if s.num_tracker_dets == 0:
    res['CLR_FN'] = s.num_gt_dets
    res['ML'] = s.num_gt_ids
    return res
  if s.num_gt_dets == 0:
    res['CLR_FP'] = s.num_tracker_dets
    return res

  n_g = s.num_gt_ids
  present = np.zeros(n_g)      # frames the GT ID is present (and counted)
  tracked = np.zeros(n_g)      # ... and matched
  starts = np.zeros(n_g)       # times a run of tracked frames starts
  last = np.full(n_g, -1)      # last tracker ID ever matched to the GT ID
  prev = np.full(n_g, -1)      # tracker ID matched in the "previous" frame
  motp = 0.0
  for g, d, sim in zip(s.gt_ids, s.tracker_ids, s.similarity):
    if len(g) == 0:
      res['CLR_FP'] += len(d)
      continue
    if len(d) == 0:
      res['CLR_FN'] += len(g)
      present[g] += 1
      continue   # `prev` is kept: Q7
    # Keeping last frame's pairs outweighs any IoU; then the largest IoU.
    score = 1000 * (d[None, :] == prev[g][:, None]) + sim
    score[sim < MATCH_THRESHOLD - _EPS] = 0
    rows, cols = linear_sum_assignment(-score)
    keep = score[rows, cols] > _EPS
    rows, cols = rows[keep], cols[keep]
    mg, md = g[rows], d[cols]
    res['IDSW'] += int(np.sum((last[mg] >= 0) & (last[mg] != md)))
    present[g] += 1
    tracked[mg] += 1
    was_untracked = prev < 0
    last[mg] = md
    prev[:] = -1
    prev[mg] = md
    starts += was_untracked & (prev >= 0)
    res['CLR_TP'] += len(mg)
    res['CLR_FN'] += len(g) - len(mg)
    res['CLR_FP'] += len(d) - len(mg)
    if len(mg):
      motp += sum(sim[rows, cols])
  ratio = tracked[present > 0] / present[present > 0]
  res['MT'] = int(np.sum(ratio > 0.8))
  res['PT'] = int(np.sum(ratio >= 0.2)) - res['MT']
  res['ML'] = n_g - res['MT'] - res['PT']
  res['Frag'] = int(np.sum(starts[starts > 0] - 1))
  res['MOTP_sum'] = motp
  res['CLR_Frames'] = s.num_frames
  return res


def _clear_finish(res: dict) -> dict:
  tp, fn, fp, idsw = res['CLR_TP'], res['CLR_FN'], res['CLR_FP'], res['IDSW']
  num_gt_ids = res['MT'] + res['ML'] + res['PT']
  gt_dets = np.maximum(1.0, tp + fn)
  res['MTR'] = res['MT'] / np.maximum(1.0, num_gt_ids)
  res['MLR'] = res['ML'] / np.maximum(1.0, num_gt_ids)
  res['PTR'] = res['PT'] / np.maximum(1.0, num_gt_ids)
  res['CLR_Re'] = tp / gt_dets
  res['CLR_Pr'] = tp / np.maximum(1.0, tp + fp)
  res['MODA'] = (tp - fp) / gt_dets
  res['MOTA'] = (tp - fp - idsw) / gt_dets
  res['MOTP'] = res['MOTP_sum'] / np.maximum(1.0, tp)
  res['sMOTA'] = (res['MOTP_sum'] - fp - idsw) / gt_dets
  res['CLR_F1'] = tp / np.maximum(1.0, tp + 0.5 * fn + 0.5 * fp)
  res['FP_per_frame'] = fp / np.maximum(1.0, res['CLR_Frames'])
  log_idsw = math.log10(idsw) if idsw > 0 else idsw
  res['MOTAL'] = (tp - fp - log_idsw) / gt_dets
  return res


def _clear_pool(parts: list) -> dict:
  res = {f: _sum(p[f] for p in parts)
         for f in CLEAR_COUNT_FIELDS + ('MOTP_sum',)}
  return _clear_finish(res)


# ---------------------------------------------------------------- combining


def _sum(values):
  """Left-to-right sum from 0, like Python's sum (TrackEval's order)."""
  total = 0
  for v in values:
    total = total + v
  return total


def _count_sequence(s: _Sequence) -> dict:
  return {'Dets': s.num_tracker_dets, 'GT_Dets': s.num_gt_dets,
          'IDs': s.num_tracker_ids, 'GT_IDs': s.num_gt_ids}


def _count_pool(parts: list) -> dict:
  return {f: _sum(p[f] for p in parts) for f in COUNT_FIELDS}


_POOL = {'HOTA': _hota_pool, 'Identity': _identity_pool, 'CLEAR': _clear_pool,
         'Count': _count_pool}
_COUNTS = {'HOTA': HOTA_COUNT_FIELDS, 'Identity': IDENTITY_COUNT_FIELDS,
           'CLEAR': CLEAR_COUNT_FIELDS, 'Count': COUNT_FIELDS}
_FLOATS = {'HOTA': HOTA_FLOAT_FIELDS + HOTA_ARRAY_FIELDS,
           'Identity': IDENTITY_FLOAT_FIELDS, 'CLEAR': CLEAR_FLOAT_FIELDS,
           'Count': ()}


def _class_average(family: str, parts: list) -> dict:
  """TrackEval's cls_comb_cls_av: counts summed, float fields averaged."""
  res = {f: _sum(p[f] for p in parts) for f in _COUNTS[family]}
  for f in _FLOATS[family]:
    res[f] = np.mean([p[f] for p in parts], axis=0)
  return res


# ---------------------------------------------------------------- output


def _block(family: str, res: dict) -> dict:
  """JSON-friendly view of one metric family's fields."""
  if family == 'HOTA':
    out = {f: float(np.mean(res[f])) for f in HOTA_ARRAY_FIELDS}
    out.update({f: float(res[f]) for f in HOTA_FLOAT_FIELDS})
    out['per_alpha'] = {f: [float(x) for x in res[f]]
                        for f in HOTA_ARRAY_FIELDS + HOTA_COUNT_FIELDS}
    out['alphas'] = [float(a) for a in ALPHAS]
    return out
  out = {f: int(res[f]) for f in _COUNTS[family]}
  out.update({f: float(res[f]) for f in _FLOATS[family]})
  return out


def _category_names(names: dict) -> dict:
  """{category id: display name}, repeated names made unique like AP's."""
  out, used = {}, set()
  for cat, name in names.items():
    out[cat] = f'{name} (id {cat})' if name in used else name
    used.add(name)
  return out


def evaluate_tracks(gt: dict, results: list,
                    score_threshold: float | None = None) -> dict:
  """HOTA, IDF1 and CLEAR of mask tracks, as TrackEval's YouTube-VIS class.

  Args:
    gt: the ground-truth JSON object (``videos``, ``annotations``,
      ``categories``), as for :func:`iai_jax.evaluate.evaluate`.
    results: the results JSON list (``video_id``, ``category_id``, ``score``,
      ``segmentations``: compressed RLE or null per frame). May be empty.
    score_threshold: if given, only result entries with ``score >=
      score_threshold`` are evaluated (TrackEval itself keeps all).

  Returns:
    A dict with
      * the headline numbers as flat keys (class-averaged; HOTA family: the
        mean over alpha): ``HOTA``, ``DetA``, ``AssA``, ``LocA``, ``IDF1``,
        ``IDP``, ``IDR``, ``MOTA``, ``MOTP``, ``IDSW``, ``Frag``;
      * ``'class_averaged'`` and ``'detection_averaged'``: {family: block}
        for the families ``'HOTA'``, ``'Identity'``, ``'CLEAR'``, ``'Count'``
        (TrackEval's ``cls_comb_cls_av`` / ``cls_comb_det_av`` rows);
      * ``'per_class'``: {category name: {family: block}}.
    A HOTA block has the alpha means of HOTA, DetA, AssA, DetRe, DetPr,
    AssRe, AssPr, LocA, OWTA, the values HOTA(0), LocA(0), HOTALocA(0), and
    ``'per_alpha'`` arrays (those nine plus HOTA_TP / HOTA_FN / HOTA_FP) for
    ``'alphas'``; Identity: IDF1, IDR, IDP, IDTP, IDFN, IDFP; CLEAR: MOTA,
    MOTP, MODA, CLR_Re, CLR_Pr, MTR, PTR, MLR, sMOTA, CLR_F1, FP_per_frame,
    MOTAL, MOTP_sum and the counts CLR_TP, CLR_FN, CLR_FP, IDSW, MT, PT, ML,
    Frag, CLR_Frames; Count: Dets, GT_Dets, IDs, GT_IDs.

  Raises:
    EvaluationError (a ValueError) on malformed input.
  """
  video_ids, videos, _, names, gt_tracks = _parse_gt(gt, ovis=False)
  dt_tracks = _parse_results(results, videos, names)
  if score_threshold is not None:
    dt_tracks = {k: [t for t in v if t.score >= score_threshold]
                 for k, v in dt_tracks.items()}
  seq_order = sorted(video_ids, key=lambda v: (_sequence_name(videos[v]), v))
  if not names:
    raise EvaluationError('ground truth has no categories', 'gt')
  video_tracks = {vid: [] for vid in video_ids}
  for (vid, _), tracks in list(gt_tracks.items()) + list(dt_tracks.items()):
    video_tracks[vid].extend(tracks)
  frames = {vid: _num_frames(videos[vid], video_tracks[vid])
            for vid in video_ids}

  families = {'HOTA': _hota_sequence, 'Identity': _identity_sequence,
              'CLEAR': _clear_sequence, 'Count': _count_sequence}
  per_class = {}
  for cat in names:   # GT categories file order
    parts = {f: [] for f in families}
    for vid in seq_order:
      gts, dts = gt_tracks.get((vid, cat), []), dt_tracks.get((vid, cat), [])
      # A video without tracks of the class adds exact zeros to every sum.
      seq = _build_sequence(frames[vid], gts, dts, vid) if gts or dts else (
          _Sequence(frames[vid], [], [], [], 0, 0, 0, 0))
      for family, fn in families.items():
        parts[family].append(fn(seq))
    per_class[cat] = {f: _POOL[f](parts[f]) for f in families}

  cls_av, det_av = {}, {}
  for family in families:
    class_parts = [per_class[c][family] for c in names]
    cls_av[family] = _class_average(family, class_parts)
    det_av[family] = _POOL[family](class_parts)

  out = {}
  for family, keys in HEADLINE_KEYS.items():
    block = _block(family, cls_av[family])
    out.update({k: block[k] for k in keys})
  display = _category_names(names)
  out['class_averaged'] = {f: _block(f, r) for f, r in cls_av.items()}
  out['detection_averaged'] = {f: _block(f, r) for f, r in det_av.items()}
  out['per_class'] = {display[c]: {f: _block(f, r) for f, r in fams.items()}
                      for c, fams in per_class.items()}
  return out


# ---------------------------------------------------------------- table

_TABLE_COLUMNS = {
    'HOTA': ('HOTA', 'DetA', 'AssA', 'LocA', 'DetRe', 'DetPr', 'AssRe',
             'AssPr', 'HOTA(0)'),
    'Identity': ('IDF1', 'IDP', 'IDR', 'IDTP', 'IDFN', 'IDFP'),
    'CLEAR': ('MOTA', 'MOTP', 'IDSW', 'Frag', 'MT', 'PT', 'ML', 'CLR_TP',
              'CLR_FN', 'CLR_FP'),
}


def format_table(result: dict, families=METRIC_FAMILIES) -> str:
  """Per metric family: the class-averaged and detection-averaged rows, then
  one row per category (ratios as fractions, counts as integers)."""
  rows = [('class-averaged', result['class_averaged']),
          ('detection-averaged', result['detection_averaged'])]
  rows += list(result['per_class'].items())
  width = max(len(name) for name, _ in rows) + 2
  lines = ['Track metrics (TrackEval YouTube-VIS; HOTA family: mean over '
           'alpha 0.05:0.95; headline = class-averaged):']
  for family in families:
    cols = _TABLE_COLUMNS[family]
    lines.append('')
    lines.append(f'  {family:<{width}}' + ''.join(f'{c:>9}' for c in cols))
    for name, blocks in rows:
      block = blocks[family]
      cells = [f'{block[c]:>9d}' if isinstance(block[c], int) else
               f'{block[c]:>9.3f}' for c in cols]
      lines.append(f'  {name:<{width}}' + ''.join(cells))
  return '\n'.join(lines)
