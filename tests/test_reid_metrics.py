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
