"""Identity kept across a gap: the quantity IAI's global memory exists for.

For every ground-truth track and every pair of consecutive frames in which
it is visible - frames a < b with nothing of it visible in between, so
``b - a - 1`` is the gap length (0: consecutive frames) - look up the
predicted track that holds the object at a and the one at b: the predicted
track whose mask has the largest IoU with the GT mask in that frame, if that
IoU is at least ``iou_thr``. The object kept its identity across the gap
when both exist and are the same predicted track. Accuracy per gap-length
bucket = kept / pairs; a pair whose object was not detected at a or b counts
as not kept (the ``detected`` column says how many were found at both).

Predicted tracks are the results' distinct segmentation sequences (a
result per (ID, class) pair: results with the same masks are the same ID).
"""

from __future__ import annotations

from pycocotools import mask as mask_utils

from iai_jax.vis_inputs import _parse_gt, _parse_results

BUCKETS = ((0, 0), (1, 2), (3, 5), (6, 10), (11, 15), (16, None))


def _bucket(gap: int) -> str:
  for lo, hi in BUCKETS:
    if gap >= lo and (hi is None or gap <= hi):
      return f'{lo}' if lo == hi else (f'{lo}+' if hi is None else f'{lo}-{hi}')
  raise ValueError(gap)


def _frame_iou(a, b) -> float:
  return float(mask_utils.iou([a], [b], [0])[0, 0])


def id_accuracy_by_gap(gt: dict, results: list, iou_thr: float = 0.5) -> dict:
  """{bucket: {'pairs', 'detected', 'kept', 'accuracy'}} over all GT tracks
  (crowd ones excluded), buckets of the gap length (see the module doc)."""
  _, videos, _, names, gt_tracks = _parse_gt(gt, ovis=False)
  res_tracks = _parse_results(results, videos, names)
  preds = {}
  for (vid, _), tracks in res_tracks.items():
    seen = preds.setdefault(vid, {})
    for tr in tracks:
      key = tuple(None if s is None else (tuple(s['size']), s['counts'])
                  for s in tr.seq)
      seen.setdefault(key, tr.seq)
  out = {_bucket(lo): {'pairs': 0, 'detected': 0, 'kept': 0}
         for lo, _ in BUCKETS}
  for (vid, _), tracks in gt_tracks.items():
    cands = list(preds.get(vid, {}).values())
    for tr in tracks:
      if tr.crowd:
        continue
      frames = [f for f, s in enumerate(tr.seq)
                if s is not None and tr.areas[f] > 0]

      def holder(f):
        best, best_iou = None, iou_thr
        for k, seq in enumerate(cands):
          if f < len(seq) and seq[f] is not None:
            iou = _frame_iou(seq[f], tr.seq[f])
            if iou >= best_iou:
              best, best_iou = k, iou
        return best

      for a, b in zip(frames[:-1], frames[1:]):
        entry = out[_bucket(b - a - 1)]
        entry['pairs'] += 1
        ha, hb = holder(a), holder(b)
        if ha is not None and hb is not None:
          entry['detected'] += 1
          entry['kept'] += int(ha == hb)
  for entry in out.values():
    entry['accuracy'] = (entry['kept'] / entry['pairs'] if entry['pairs']
                         else -1.0)
  return out


def format_table(acc: dict) -> str:
  lines = ['ID kept across a gap (frames the object was not visible):',
           f'  {"gap":<8}{"pairs":>8}{"detected":>10}{"kept":>8}{"accuracy":>10}']
  for bucket, e in acc.items():
    a = f'{e["accuracy"]:.3f}' if e['pairs'] else 'n/a'
    lines.append(f'  {bucket:<8}{e["pairs"]:>8}{e["detected"]:>10}'
                 f'{e["kept"]:>8}{a:>10}')
  return '\n'.join(lines)
