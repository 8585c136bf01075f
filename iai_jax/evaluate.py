"""Local YouTube-VIS / OVIS video instance segmentation evaluation.

A self-contained re-implementation of the benchmark metric (track-level mask
AP/AR with a spatio-temporal IoU) that reproduces the numbers of the official
YouTube-VIS evaluation code and of its OVIS variant, including their corner
cases (see ``shared/reference/vis-format-and-metric.md``):

* track area = mean of the truthy per-frame areas (GT: the stored ``areas``;
  results: the RLE areas), area ranges closed on both ends;
* crowd GT tracks (truthy ``iscrowd``) are ignore regions; those with
  ``int(iscrowd) != 0`` can absorb several detections;
* spatio-temporal IoU over ``zip(prediction frames, GT frames)`` (the shorter
  list wins; frames whose masks differ in size add nothing);
* an IoU equal to a threshold matches; among equal IoUs the later GT wins;
* stable (mergesort) score ordering: within a (video, category) the results
  file order, across videos the ascending video id;
* top-100 detections per (video, category), then 1/10/100 in the
  accumulation;
* GT annotations with id 0 are never true positives;
* OVIS: occlusion score of a track = mean of its top ``ceil(n/2)`` per-frame
  occlusion scores, closed occlusion bins, detections never filtered by
  occlusion, equal prediction / GT sequence lengths required.

Unlike the official code an empty results list is valid: AP/AR are 0 where
ground truth exists and -1 elsewhere.

Association metrics (HOTA, IDF1, CLEAR: ID switches, fragmentations) as the
``trackeval`` package computes them are in :mod:`iai_jax.track_metrics`;
:func:`run_track_metrics` and ``--metrics`` give them next to AP.

Usage::

  python -m iai_jax.evaluate --gt GT.json --results RESULTS.json [--ovis] [--json]
      [--metrics=ap,hota,idf1,clear]
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from iai_jax import track_metrics
from iai_jax.vis_inputs import (EvaluationError, _finish_track,  # noqa: F401
                                _parse_gt, _parse_results, _Track, load_json)

# ---------------------------------------------------------------- parameters

# Built exactly like the benchmark's parameters, so that equality tests
# (0.5, 0.75) and the recall sampling use bit-identical values.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101, endpoint=True)
MAX_DETS = (1, 10, 100)
AREA_RANGES = ((0, 1e5 ** 2), (0, 128 ** 2), (128 ** 2, 256 ** 2),
               (256 ** 2, 1e5 ** 2))
AREA_LABELS = ('all', 'small', 'medium', 'large')
OCC_RANGES = ((0, 1), (0, 0.25), (0.25, 0.5), (0.5, 1))
OCC_LABELS = ('all', 'light', 'medium', 'heavy')

YTVIS_KEYS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl',
              'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')
OVIS_KEYS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'APso', 'APmo', 'APho',
             'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl', 'ARso', 'ARmo',
             'ARho')

# (key, is_ap, iou_threshold, area_label, occlusion_label, max_dets)
_SUMMARY = {
    'AP': (True, None, 'all', 'all', 100),
    'AP50': (True, 0.5, 'all', 'all', 100),
    'AP75': (True, 0.75, 'all', 'all', 100),
    'APs': (True, None, 'small', 'all', 100),
    'APm': (True, None, 'medium', 'all', 100),
    'APl': (True, None, 'large', 'all', 100),
    'APso': (True, None, 'all', 'light', 100),
    'APmo': (True, None, 'all', 'medium', 100),
    'APho': (True, None, 'all', 'heavy', 100),
    'AR1': (False, None, 'all', 'all', 1),
    'AR10': (False, None, 'all', 'all', 10),
    'AR100': (False, None, 'all', 'all', 100),
    'ARs': (False, None, 'small', 'all', 100),
    'ARm': (False, None, 'medium', 'all', 100),
    'ARl': (False, None, 'large', 'all', 100),
    'ARso': (False, None, 'all', 'light', 100),
    'ARmo': (False, None, 'all', 'medium', 100),
    'ARho': (False, None, 'all', 'heavy', 100),
}


# ---------------------------------------------------------------- IoU


def _track_ious(dts: list[_Track], gts: list[_Track]) -> np.ndarray:
  """Spatio-temporal IoU matrix (len(dts), len(gts)).

  Frames are paired like ``zip(dt frames, gt frames)``; per frame both
  present adds |d&g| to the intersection and |d|g| to the union, one present
  adds its area to the union; masks of different sizes add nothing.
  """
  D, G = len(dts), len(gts)
  len_d = np.array([len(t.seq) for t in dts])
  len_g = np.array([len(t.seq) for t in gts])
  inter = np.zeros((D, G), np.int64)
  union = np.zeros((D, G), np.int64)
  n_frames = min(len_d.max(), len_g.max())
  for f in range(n_frames):
    valid = (f < len_d)[:, None] & (f < len_g)[None, :]
    ad = np.array([t.areas[f] if f < len(t.seq) else -1 for t in dts])
    ag = np.array([t.areas[f] if f < len(t.seq) else -1 for t in gts])
    pd, pg = ad >= 0, ag >= 0
    ad, ag = np.maximum(ad, 0), np.maximum(ag, 0)
    only = (pd[:, None] & ~pg[None, :]) * ad[:, None] + (
        ~pd[:, None] & pg[None, :]) * ag[None, :]
    union += np.where(valid, only, 0)
    di, gi = np.flatnonzero(pd), np.flatnonzero(pg)
    if len(di) == 0 or len(gi) == 0:
      continue
    iou = np.array(mask_utils.iou([dts[d].seq[f] for d in di],
                                  [gts[g].seq[f] for g in gi],
                                  [0] * len(gi)), np.float64)
    iou = iou.reshape(len(di), len(gi))
    same = np.array([[dts[d].sizes[f] == gts[g].sizes[f] for g in gi]
                     for d in di])
    both = ad[di][:, None] + ag[gi][None, :]
    # iou = i / (|d| + |g| - i)  =>  i = iou (|d| + |g|) / (1 + iou)
    safe = np.where(same, iou, 0.0)
    i_f = np.rint(safe * both / (1.0 + safe)).astype(np.int64)
    u_f = np.where(same, both - i_f, 0)
    sub = np.ix_(di, gi)
    inter[sub] += np.where(valid[sub], i_f, 0)
    union[sub] += np.where(valid[sub], u_f, 0)
  out = np.zeros((D, G))
  np.divide(inter, union, out=out, where=union > 0)
  return out


# ---------------------------------------------------------------- matching


@dataclasses.dataclass
class _VideoEval:
  """Matching result of one (category, area, occlusion, video)."""
  scores: np.ndarray     # (D,) sorted descending
  tp: np.ndarray         # (T, D) matched to a GT with a nonzero id
  ignore: np.ndarray     # (T, D) detection ignored
  gt_ignore: np.ndarray  # (G,)


def _match(ious: np.ndarray, dts: list[_Track], gts: list[_Track],
           gt_ignore: np.ndarray, area_rng) -> _VideoEval:
  """Greedy matching of score-sorted detections, all IoU thresholds at once.

  For each threshold a detection takes, among the still free regular GTs
  whose IoU reaches the threshold, the one with the largest IoU (the last
  such one on ties); only when there is none does it try the ignored GTs,
  where crowd GTs stay free after a match.
  """
  order = np.argsort(gt_ignore, kind='mergesort')
  gt_ignore = gt_ignore[order]
  reusable = np.array([gts[g].reusable for g in order], bool)
  nonzero = np.array([gts[g].ann_id != 0 for g in order], bool)
  T, D, G = len(IOU_THRESHOLDS), len(dts), len(order)
  thr = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None]
  taken = np.zeros((T, G), bool)
  matched = np.zeros((T, D), bool)       # matched, GT id nonzero
  dt_ignore = np.zeros((T, D), bool)
  if D and G:
    ious = ious[:, order]
    for d in range(D):
      row = ious[d][None, :]
      ok = (~taken | reusable[None, :]) & (row >= thr)
      regular = ok & ~gt_ignore[None, :]
      cand = np.where(regular.any(1, keepdims=True), regular, ok)
      has = cand.any(1)
      if not has.any():
        continue
      vals = np.where(cand, row, -np.inf)
      hit = cand & (vals == vals.max(1, keepdims=True))
      m = G - 1 - np.argmax(hit[:, ::-1], axis=1)
      t = np.flatnonzero(has)
      m = m[t]
      taken[t, m] = True
      matched[t, d] = nonzero[m]
      dt_ignore[t, d] = gt_ignore[m]
  areas = np.array([t.avg_area for t in dts], np.float64)
  outside = (areas < area_rng[0]) | (areas > area_rng[1])
  dt_ignore |= ~matched & outside[None, :]
  return _VideoEval(scores=np.array([t.score for t in dts], np.float64),
                    tp=matched, ignore=dt_ignore, gt_ignore=gt_ignore)


# ---------------------------------------------------------------- accumulate


def _accumulate(evals: list[_VideoEval], precision: np.ndarray,
                recall: np.ndarray):
  """Fills precision (T, R, M) and recall (T, M) of one setting in place."""
  if not evals:
    return
  gt_ignore = np.concatenate([e.gt_ignore for e in evals])
  n_pos = np.count_nonzero(gt_ignore == 0)
  if n_pos == 0:
    return
  for mi, max_det in enumerate(MAX_DETS):
    scores = np.concatenate([e.scores[:max_det] for e in evals])
    order = np.argsort(-scores, kind='mergesort')
    tp = np.concatenate([e.tp[:, :max_det] for e in evals], axis=1)[:, order]
    ig = np.concatenate([e.ignore[:, :max_det] for e in evals], axis=1)[:, order]
    tps = np.cumsum(tp & ~ig, axis=1).astype(np.float64)
    fps = np.cumsum(~tp & ~ig, axis=1).astype(np.float64)
    n = tps.shape[1]
    rc = tps / n_pos
    pr = tps / (fps + tps + np.spacing(1))
    recall[:, mi] = rc[:, -1] if n else 0
    # monotone (non-increasing) precision envelope
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    for t in range(len(IOU_THRESHOLDS)):
      idx = np.searchsorted(rc[t], RECALL_THRESHOLDS, side='left')
      q = np.zeros(len(RECALL_THRESHOLDS))
      ok = idx < n
      q[ok] = pr[t, idx[ok]]
      precision[t, :, mi] = q


# ---------------------------------------------------------------- driver


@dataclasses.dataclass
class Evaluation:
  """Full evaluation output.

  precision: (T, R, K, A, O, M) array, -1 where a category has no GT in a
    setting (O = 1 for YouTube-VIS); recall: (T, K, A, O, M).
  """
  stats: dict
  per_category_ap: dict
  precision: np.ndarray
  recall: np.ndarray
  category_ids: list
  ovis: bool


def _mean_valid(s: np.ndarray) -> float:
  s = s[s > -1]
  return -1.0 if len(s) == 0 else float(np.mean(s))


def _summary(precision, recall, ovis: bool) -> dict:
  stats = {}
  for key in OVIS_KEYS if ovis else YTVIS_KEYS:
    is_ap, iou_thr, area, occ, max_det = _SUMMARY[key]
    a = AREA_LABELS.index(area)
    o = OCC_LABELS.index(occ) if ovis else 0
    m = MAX_DETS.index(max_det)
    s = precision if is_ap else recall
    if iou_thr is not None:
      s = s[np.where(iou_thr == IOU_THRESHOLDS)[0]]
    s = s[:, :, :, a, o, m] if is_ap else s[:, :, a, o, m]
    stats[key] = _mean_valid(s)
  return stats


def run_evaluation(gt: dict, results: list, ovis: bool = False) -> Evaluation:
  """Evaluates `results` against `gt`; see :func:`evaluate`."""
  video_ids, videos, cat_ids, names, gt_tracks = _parse_gt(gt, ovis)
  dt_tracks = _parse_results(results, videos, names)
  occ_ranges = OCC_RANGES if ovis else ((0, 1),)
  T, R, K = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(cat_ids)
  A, O, M = len(AREA_RANGES), len(occ_ranges), len(MAX_DETS)
  precision = -np.ones((T, R, K, A, O, M))
  recall = -np.ones((T, K, A, O, M))
  top = MAX_DETS[-1]

  for k, cat in enumerate(cat_ids):
    # per (area, occlusion): list of _VideoEval in ascending video id order
    evals = [[[] for _ in range(O)] for _ in range(A)]
    for vid in video_ids:
      gts = gt_tracks.get((vid, cat), [])
      dts = dt_tracks.get((vid, cat), [])
      if not gts and not dts:
        continue
      order = np.argsort([-t.score for t in dts], kind='mergesort')[:top]
      dts = [dts[i] for i in order]
      if ovis:
        for d in dts:
          for g in gts:
            if len(d.seq) != len(g.seq):
              raise EvaluationError(
                  f'{d.label} has {len(d.seq)} segmentations but GT '
                  f'{g.label} of video {vid} has {len(g.seq)}; OVIS requires '
                  'equal lengths', 'results')
      ious = _track_ious(dts, gts) if dts and gts else np.zeros(
          (len(dts), len(gts)))
      gt_area = np.array([g.avg_area for g in gts], np.float64)
      gt_occ = np.array([g.occ_score for g in gts], np.float64)
      gt_crowd = np.array([g.crowd for g in gts], bool)
      for a, (lo, hi) in enumerate(AREA_RANGES):
        for o, (olo, ohi) in enumerate(occ_ranges):
          ignore = gt_crowd | (gt_area < lo) | (gt_area > hi)
          if ovis:
            ignore = ignore | (gt_occ < olo) | (gt_occ > ohi)
          evals[a][o].append(_match(ious, dts, gts, ignore, (lo, hi)))
    for a in range(A):
      for o in range(O):
        _accumulate(evals[a][o], precision[:, :, k, a, o, :],
                    recall[:, k, a, o, :])

  stats = _summary(precision, recall, ovis)
  per_cat = {}
  for k, cat in enumerate(cat_ids):
    name = names[cat]
    if name in per_cat:
      name = f'{name} (id {cat})'
    per_cat[name] = _mean_valid(precision[:, :, k, 0, 0, -1])
  return Evaluation(stats=stats, per_category_ap=per_cat, precision=precision,
                    recall=recall, category_ids=cat_ids, ovis=ovis)


def evaluate(gt: dict, results: list, ovis: bool = False) -> dict:
  """Benchmark statistics of `results` against the ground truth `gt`.

  Args:
    gt: the ground-truth JSON object (``videos``, ``annotations``,
      ``categories``; OVIS: ``occlusion`` on every annotation).
    results: the results JSON list (``video_id``, ``category_id``, ``score``,
      ``segmentations`` with compressed RLE or null per frame). May be empty.
    ovis: use the OVIS metric (occlusion bins, 18 values).

  Returns:
    {'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs',
    'ARm', 'ARl'} (OVIS adds APso/APmo/APho/ARso/ARmo/ARho) -> float, -1 where
    the setting has no ground truth.

  Raises:
    EvaluationError (a ValueError) on malformed input.
  """
  return run_evaluation(gt, results, ovis).stats


def run_track_metrics(gt: dict, results: list,
                      score_threshold: float | None = None) -> dict:
  """HOTA (DetA, AssA, LocA), IDF1 and CLEAR (MOTA, IDSW, Frag) of `results`.

  The numbers of the ``trackeval`` package's YouTube-VIS evaluation; see
  :func:`iai_jax.track_metrics.evaluate_tracks` for the returned dict (flat
  class-averaged headline keys ``HOTA``, ``DetA``, ``AssA``, ``LocA``,
  ``IDF1``, ``IDP``, ``IDR``, ``MOTA``, ``MOTP``, ``IDSW``, ``Frag``, plus
  ``class_averaged``, ``detection_averaged`` and ``per_class`` details).
  """
  return track_metrics.evaluate_tracks(gt, results, score_threshold)


def per_category_ap(gt: dict, results: list, ovis: bool = False) -> dict:
  """Category name -> AP (IoU 0.50:0.95, area all, 100 dets), -1 if no GT.

  Repeated names get their id appended: ``'name (id 7)'``.
  """
  return run_evaluation(gt, results, ovis).per_category_ap


# ---------------------------------------------------------------- CLI


def format_table(evaluation: Evaluation) -> str:
  """COCO-style summary lines followed by AP per category."""
  lines = []
  for key, value in evaluation.stats.items():
    is_ap, iou_thr, area, occ, max_det = _SUMMARY[key]
    title = 'Average Precision  (AP)' if is_ap else 'Average Recall     (AR)'
    iou = '0.50:0.95' if iou_thr is None else f'{iou_thr:0.2f}'
    occ_part = f' | occ={occ:>6s}' if evaluation.ovis else ''
    lines.append(f' {title} @[ IoU={iou:<9} | area={area:>6s}{occ_part} | '
                 f'maxDets={max_det:>3d} ] = {value:0.3f}')
  lines.append('')
  lines.append('AP per category (IoU=0.50:0.95, area=all, maxDets=100):')
  width = max((len(n) for n in evaluation.per_category_ap), default=0)
  for name, value in evaluation.per_category_ap.items():
    lines.append(f'  {name:<{width}} {value:0.3f}')
  return '\n'.join(lines)


# --metrics names -> track_metrics families ('ap' is this module's AP/AR)
_METRIC_NAMES = {'ap': (), 'hota': ('HOTA',), 'idf1': ('Identity',),
                 'clear': ('CLEAR',), 'track': ('HOTA', 'Identity', 'CLEAR')}


def _define_flags(fv) -> None:
  from absl import flags
  flags.DEFINE_string('gt', None, 'ground-truth JSON file', flag_values=fv)
  flags.DEFINE_string('results', None, 'results JSON file', flag_values=fv)
  flags.DEFINE_bool('ovis', False, 'OVIS metric (occlusion bins)',
                    flag_values=fv)
  flags.DEFINE_bool('json', False, 'print the statistics as one JSON object',
                    flag_values=fv)
  flags.DEFINE_string(
      'metrics', 'ap', 'comma-separated list of: ap (AP/AR, the default), '
      'hota (HOTA, DetA, AssA, LocA), idf1 (IDF1, IDP, IDR), clear (MOTA, '
      'MOTP, ID switches, Frag), track (hota, idf1 and clear); association '
      "metrics as the trackeval package's YouTube-VIS evaluation computes "
      'them', flag_values=fv)
  flags.mark_flags_as_required(['gt', 'results'], flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m iai_jax.evaluate --gt=GT.json --results=R.json [--ovis]
  [--json] [--metrics=ap,hota]``; ``argv`` without the program name."""
  from iai_jax import cli
  args = cli.parse_own_flags(
      argv, _define_flags, 'python -m iai_jax.evaluate --gt=GT.json '
      '--results=RESULTS.json [--ovis] [--json] [--metrics=ap,hota]')
  wanted = [m.strip().lower() for m in args.metrics.split(',') if m.strip()]
  unknown = [m for m in wanted if m not in _METRIC_NAMES]
  if unknown or not wanted:
    sys.exit(f'error: --metrics={args.metrics!r}: expected a comma-separated '
             f'list of {", ".join(_METRIC_NAMES)}')
  families = [f for f in ('HOTA', 'Identity', 'CLEAR')
              if any(f in _METRIC_NAMES[m] for m in wanted)]
  errors = (EvaluationError,)
  paths = {'gt': args.gt, 'results': args.results}
  try:
    gt = load_json(args.gt, 'gt')
    results = load_json(args.results, 'results')
    evaluation = run_evaluation(gt, results, args.ovis) if 'ap' in wanted \
        else None
    tracks = track_metrics.evaluate_tracks(gt, results) if families else None
  except errors as e:
    message = str(e)
    path = paths.get(e.source)
    if path is not None and not message.startswith(path + ':'):
      message = f'{path}: {message}'
    sys.exit(f'error: {message}')
  if args.json:
    out = dict(evaluation.stats) if evaluation is not None else {}
    if tracks is not None:
      for family in families:
        out.update({k: tracks[k] for k in track_metrics.HEADLINE_KEYS[family]})
      out['track_metrics'] = {
          'class_averaged': {f: tracks['class_averaged'][f]
                             for f in families + ['Count']},
          'detection_averaged': {f: tracks['detection_averaged'][f]
                                 for f in families + ['Count']},
          'per_class': {name: {f: blocks[f] for f in families + ['Count']}
                        for name, blocks in tracks['per_class'].items()}}
    print(json.dumps(out))
  else:
    parts = [format_table(evaluation)] if evaluation is not None else []
    if tracks is not None:
      parts.append(track_metrics.format_table(tracks, families))
    print('\n\n'.join(parts))
  return 0


if __name__ == '__main__':
  main()
