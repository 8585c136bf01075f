"""Identity kept across gaps, on hand-made tracks."""

import numpy as np
from pycocotools import mask as mask_utils

from iai_jax import reid_metrics

H, W = 8, 10


def _rle(y0, y1, x0, x1):
  m = np.zeros((H, W), np.uint8)
  m[y0:y1, x0:x1] = 1
  r = mask_utils.encode(np.asfortranarray(m))
  return {'size': [H, W], 'counts': r['counts'].decode()}


def _gt(seq):
  return {'videos': [{'id': 1, 'height': H, 'width': W,
                      'file_names': [f'{t}.jpg' for t in range(len(seq))]}],
          'categories': [{'id': 1, 'name': 'a'}],
          'annotations': [{'id': 1, 'video_id': 1, 'category_id': 1,
                           'iscrowd': 0, 'segmentations': seq,
                           'areas': [None if s is None else 16 for s in seq]}]}


def test_kept_across_gaps_by_hand():
  box = _rle(0, 4, 0, 4)
  other = _rle(4, 8, 6, 10)
  # the object is visible at frames 0, 1, 4, 5, 9 (gaps 0, 2, 0, 3)
  gt = _gt([box, box, None, None, box, box, None, None, None, box])
  # predicted track A holds frames 0-1 and 9; B holds 4-5; C is elsewhere
  a = [box, box] + [None] * 7 + [box]
  b = [None] * 4 + [box, box] + [None] * 4
  c = [other] * 10
  res = [{'video_id': 1, 'category_id': 1, 'score': s, 'segmentations': q}
         for s, q in ((0.9, a), (0.8, b), (0.7, c), (0.6, a))]  # a twice
  acc = reid_metrics.id_accuracy_by_gap(_gt(gt['annotations'][0]['segmentations']), res)
  assert acc['0'] == {'pairs': 2, 'detected': 2, 'kept': 2, 'accuracy': 1.0}
  assert acc['1-2'] == {'pairs': 1, 'detected': 1, 'kept': 0, 'accuracy': 0.0}
  assert acc['3-5'] == {'pairs': 1, 'detected': 1, 'kept': 0, 'accuracy': 0.0}
  assert acc['6-10']['pairs'] == 0 and acc['6-10']['accuracy'] == -1.0
  # one predicted track over every frame: identity kept everywhere
  full = [box] * 10
  acc = reid_metrics.id_accuracy_by_gap(
      gt, [{'video_id': 1, 'category_id': 1, 'score': 1.0,
            'segmentations': full}])
  assert acc['1-2']['kept'] == 1 and acc['3-5']['kept'] == 1
  assert acc['0']['accuracy'] == 1.0


def test_missed_detection_and_low_iou_count_as_lost():
  box = _rle(0, 4, 0, 4)
  shifted = _rle(0, 4, 2, 6)  # IoU with box: 8 / 24 < 0.5
  gt = _gt([box, None, box])
  res = [{'video_id': 1, 'category_id': 1, 'score': 1.0,
          'segmentations': [box, None, shifted]}]
  acc = reid_metrics.id_accuracy_by_gap(gt, res)
  assert acc['1-2'] == {'pairs': 1, 'detected': 0, 'kept': 0, 'accuracy': 0.0}
  assert acc['1-2']['pairs'] == 1
  assert 'accuracy' in reid_metrics.format_table(acc)


def test_reid_diagnose_summary_by_hand():
  """scripts/reid_diagnose.py: rows grouped by frames since last detected,
  outcome shares, medians and how often the old ID ranks first."""
  import importlib.util
  import os
  spec = importlib.util.spec_from_file_location(
      'reid_diagnose', os.path.join(os.path.dirname(__file__), '..',
                                    'scripts', 'reid_diagnose.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  assert [mod.bucket(g) for g in (0, 1, 2, 3, 5, 6, 15, 16, 99)] == [
      '0', '1-2', '1-2', '3-5', '3-5', '6-10', '11-15', '16+', '16+']
  row = lambda gap, old, other, new, outcome: {
      'gap': gap, 'p_old': old, 'p_best_other': other, 'p_unissued': new,
      'outcome': outcome}
  rows = [row(0, 0.9, 0.1, 0.0, 'kept'), row(0, 0.7, 0.2, 0.1, 'kept'),
          row(0, 0.2, 0.6, 0.1, 'other'), row(4, 0.1, 0.3, 0.5, 'new')]
  s = mod.summarise(rows)
  assert set(s) == {'0', '3-5'}
  assert s['0']['n'] == 3 and s['0']['kept'] == 2 / 3
  assert s['0']['other'] == 1 / 3 and s['0']['new'] == 0
  assert s['0']['p_old_median'] == 0.7 and s['0']['p_best_other_median'] == 0.2
  assert s['0']['old_is_top'] == 2 / 3
  assert s['3-5'] == {'n': 1, 'kept': 0.0, 'new': 1.0, 'other': 0.0,
                      'p_old_median': 0.1, 'p_best_other_median': 0.3,
                      'p_unissued_median': 0.5, 'old_is_top': 0.0}
  assert mod.table(s).splitlines()[2].startswith('| 0 | 3 | 66.7 | 0.0 | 33.3 |')
