"""The VIS evaluator against AP/AR values worked out by hand.

Masks live on 10x10 frames; a "block" is a set of rows, so areas and
intersections are easy to count: rows(a, b) covers rows a..b-1, 10 px a row.
"""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from iai_jax import evaluate

H = W = 10


def rows(a, b):
  m = np.zeros((H, W), np.uint8)
  m[a:b] = 1
  return m


def rle(m):
  r = mask_utils.encode(np.asfortranarray(m))
  r['counts'] = r['counts'].decode('ascii')
  return r


def seq(*frames):
  """Per-frame masks (or None) -> list of compressed RLE / None."""
  return [None if f is None else rle(f) for f in frames]


def gt_json(anns, num_videos=1, num_frames=3, categories=(1, 2)):
  out = {'videos': [{'id': v + 1, 'height': H, 'width': W,
                     'length': num_frames} for v in range(num_videos)],
         'categories': [{'id': c, 'name': f'cat{c}'} for c in categories],
         'annotations': []}
  for i, a in enumerate(anns):
    segs = a['segmentations']
    ann = {'id': a.get('id', i + 1), 'video_id': a.get('video_id', 1),
           'category_id': a.get('category_id', 1),
           'iscrowd': a.get('iscrowd', 0), 'segmentations': segs,
           'areas': a['areas'] if 'areas' in a else [
               None if s is None else int(mask_utils.area(s)) for s in segs]}
    if 'occlusion' in a:
      ann['occlusion'] = a['occlusion']
    out['annotations'].append(ann)
  return out


def res(segs, score, video_id=1, category_id=1):
  return {'video_id': video_id, 'category_id': category_id, 'score': score,
          'segmentations': segs}


TRACK_A = seq(rows(0, 2), rows(0, 2), rows(0, 2))   # 20 px a frame
TRACK_B = seq(rows(5, 8), None, rows(5, 8))         # 30 px, absent in frame 1


def test_perfect_results_score_one():
  gt = gt_json([{'segmentations': TRACK_A},
                {'segmentations': TRACK_B, 'category_id': 2}])
  stats = evaluate.evaluate(gt, [res(TRACK_A, 0.9), res(TRACK_B, 0.8, category_id=2)])
  for key in ('AP', 'AP50', 'AP75', 'APs', 'AR1', 'AR10', 'AR100', 'ARs'):
    assert stats[key] == pytest.approx(1.0), key
  # all tracks are small (< 128^2): no medium / large ground truth
  for key in ('APm', 'APl', 'ARm', 'ARl'):
    assert stats[key] == -1, key
  assert list(stats) == list(evaluate.YTVIS_KEYS)


def test_false_positive_scored_above_the_true_positive():
  gt = gt_json([{'segmentations': TRACK_A}], categories=(1,))
  stats = evaluate.evaluate(gt, [res(TRACK_B, 0.9), res(TRACK_A, 0.8)])
  # ranked FP, TP: precision 0 then 1/2 at recall 1 -> the envelope is 1/2
  # at every recall threshold
  assert stats['AP'] == pytest.approx(0.5)
  assert stats['AR1'] == 0.0     # the top-1 detection is the FP
  assert stats['AR10'] == pytest.approx(1.0)


def test_spatio_temporal_iou_over_frames():
  # GT: 10 px in frames 0 and 1. Prediction: frame 0 exact, frame 1 half of
  # it (5 px), frame 2 10 px where the GT is absent:
  # I = 10 + 5, U = 10 + 10 + 10 -> IoU 0.5 exactly, which matches at 0.5
  half = np.zeros((H, W), np.uint8)
  half[2, :5] = 1
  gt = gt_json([{'segmentations': seq(rows(2, 3), rows(2, 3), None)}],
               categories=(1,))
  pred = seq(rows(2, 3), half, rows(7, 8))
  stats = evaluate.evaluate(gt, [res(pred, 0.5)])
  assert stats['AP50'] == pytest.approx(1.0)
  assert stats['AP75'] == 0.0
  assert stats['AP'] == pytest.approx(0.1)   # 1 of the 10 IoU thresholds
  ious = evaluate._track_ious(  # pylint: disable=protected-access
      [evaluate._finish_track(evaluate._Track(1, 'd', pred, 0))],
      [evaluate._finish_track(evaluate._Track(1, 'g', gt['annotations'][0][
          'segmentations'], 0))])
  assert ious[0, 0] == pytest.approx(0.5)


def test_shorter_prediction_is_truncated_like_zip():
  # the official metric zips prediction and GT frames: GT frame 2 is not
  # counted when the prediction lists only 2 frames
  gt = gt_json([{'segmentations': TRACK_A}], categories=(1,))
  stats = evaluate.evaluate(gt, [res(TRACK_A[:2], 0.9)])
  assert stats['AP'] == pytest.approx(1.0)


def test_crowd_is_an_ignore_region_that_absorbs_several_detections():
  crowd = seq(rows(5, 9), rows(5, 9), rows(5, 9))
  results = [res(crowd, 0.9), res(crowd, 0.8), res(TRACK_A, 0.7)]
  gt = gt_json([{'segmentations': crowd, 'iscrowd': 1},
                {'segmentations': TRACK_A}], categories=(1,))
  assert evaluate.evaluate(gt, results)['AP'] == pytest.approx(1.0)
  # the same track as a regular instance: ranked TP, FP (duplicate), TP with
  # 2 positives -> precision 1 up to recall 0.5 (51 thresholds), 2/3 above
  # (50 thresholds)
  gt['annotations'][0]['iscrowd'] = 0
  assert evaluate.evaluate(gt, results)['AP'] == pytest.approx(
      (51 + 50 * 2 / 3) / 101)


def test_score_ties_keep_the_results_file_order():
  gt = gt_json([{'segmentations': TRACK_A}], categories=(1,))
  tp_first = [res(TRACK_A, 0.5), res(TRACK_B, 0.5)]
  assert evaluate.evaluate(gt, tp_first)['AP'] == pytest.approx(1.0)
  assert evaluate.evaluate(gt, tp_first[::-1])['AP'] == pytest.approx(0.5)


def test_max_dets_limits_recall():
  gt = gt_json([{'segmentations': TRACK_A}, {'segmentations': TRACK_B}],
               categories=(1,))
  stats = evaluate.evaluate(gt, [res(TRACK_A, 0.9), res(TRACK_B, 0.8)])
  assert stats['AR1'] == pytest.approx(0.5)
  assert stats['AR10'] == pytest.approx(1.0)
  # only the top 100 of a (video, category) count: 100 FPs above the TP
  fps = [res(TRACK_B, 0.9)] * 100
  gt = gt_json([{'segmentations': TRACK_A}], categories=(1,))
  assert evaluate.evaluate(gt, fps + [res(TRACK_A, 0.1)])['AR100'] == 0.0
  stats = evaluate.evaluate(gt, fps[:99] + [res(TRACK_A, 0.1)])
  assert stats['AR100'] == pytest.approx(1.0)


def test_empty_results_and_categories_without_ground_truth():
  gt = gt_json([{'segmentations': TRACK_A}], categories=(1, 2))
  stats = evaluate.evaluate(gt, [])
  assert stats['AP'] == 0.0 and stats['AR100'] == 0.0
  assert stats['APl'] == -1
  per_cat = evaluate.per_category_ap(gt, [res(TRACK_A, 0.9)])
  assert per_cat == {'cat1': pytest.approx(1.0), 'cat2': -1.0}
  # a detection of a category without GT is not a false positive of another
  stats = evaluate.evaluate(gt, [res(TRACK_A, 0.9, category_id=2),
                                 res(TRACK_A, 0.5)])
  assert stats['AP'] == pytest.approx(1.0)


def test_track_area_comes_from_the_stored_areas():
  # tiny masks, but the stored areas say 71100 px on 2 of 3 frames: the track
  # is "large" (mean over the non-null frames only)
  gt = gt_json([{'segmentations': TRACK_A, 'areas': [71100, None, 71100]}],
               categories=(1,))
  stats = evaluate.evaluate(gt, [res(TRACK_A, 0.9)])
  assert stats['APl'] == pytest.approx(1.0)
  assert stats['APs'] == -1 and stats['APm'] == -1
  # area ranges are closed: exactly 128^2 is both small and medium
  gt['annotations'][0]['areas'] = [128 ** 2] * 3
  stats = evaluate.evaluate(gt, [res(TRACK_A, 0.9)])
  assert stats['APs'] == pytest.approx(1.0)
  assert stats['APm'] == pytest.approx(1.0)
  assert stats['APl'] == -1


def test_annotation_id_zero_is_never_a_true_positive():
  gt = gt_json([{'segmentations': TRACK_A, 'id': 0}], categories=(1,))
  assert evaluate.evaluate(gt, [res(TRACK_A, 0.9)])['AP'] == 0.0


def test_polygon_and_uncompressed_rle_ground_truth_decode_alike():
  m = rows(0, 2)
  poly = [[0, 0, 10, 0, 10, 2, 0, 2]]   # x, y corners of the 10x2 block
  # column-major runs: each of the 10 columns is 2 ones then 8 zeros
  uncompressed = {'size': [H, W], 'counts': [0] + [2, 8] * 10}
  np.testing.assert_array_equal(
      mask_utils.decode(mask_utils.frPyObjects(uncompressed, H, W)), m)
  for segs in ([poly] * 3, [uncompressed] * 3):
    gt = gt_json([{'segmentations': segs, 'areas': [20] * 3}], categories=(1,))
    stats = evaluate.evaluate(gt, [res(TRACK_A, 0.9)])
    # the polygon rasterises to the 10x2 block up to its edge pixels
    assert stats['AP50'] == pytest.approx(1.0), segs[0]


def test_ovis_occlusion_bins():
  occ_light = ['no_occlusion', 'no_occlusion', 'slight_occlusion']  # top 2: 0.125
  occ_heavy = ['no_occlusion', 'severe_occlusion', 'severe_occlusion']  # 0.75
  gt = gt_json([{'segmentations': TRACK_A, 'occlusion': occ_light},
                {'segmentations': TRACK_B, 'occlusion': occ_heavy}],
               categories=(1,))
  stats = evaluate.evaluate(gt, [res(TRACK_A, 0.9)], ovis=True)
  assert list(stats) == list(evaluate.OVIS_KEYS)
  assert stats['APso'] == pytest.approx(1.0)  # the lightly occluded track
  assert stats['APho'] == 0.0        # the heavily occluded one is missed
  assert stats['APmo'] == -1
  assert stats['AR100'] == pytest.approx(0.5)
  with pytest.raises(evaluate.EvaluationError, match='equal lengths'):
    evaluate.evaluate(gt, [res(TRACK_A[:2], 0.9)], ovis=True)
  gt['annotations'][0]['occlusion'][0] = 'partly'
  with pytest.raises(evaluate.EvaluationError, match='occlusion'):
    evaluate.evaluate(gt, [res(TRACK_A, 0.9)], ovis=True)


@pytest.mark.parametrize('mutate, source, match', [
    (lambda g, r: g.pop('videos'), 'gt', '"videos"'),
    (lambda g, r: g['annotations'][0].pop('areas'), 'gt', '"areas"'),
    (lambda g, r: g['annotations'][0].update(iscrowd='yes'), 'gt', 'iscrowd'),
    (lambda g, r: r[0].update(video_id=42), 'results', 'video_id 42'),
    (lambda g, r: r[0].update(score='high'), 'results', 'score'),
    (lambda g, r: r[0].update(segmentations=[[[0, 0, 1, 0, 1, 1]]] * 3),
     'results', 'compressed RLE'),
])
def test_bad_input_names_the_problem(mutate, source, match):
  gt = gt_json([{'segmentations': TRACK_A}], categories=(1,))
  results = [res(TRACK_A, 0.9)]
  mutate(gt, results)
  with pytest.raises(evaluate.EvaluationError, match=match) as e:
    evaluate.evaluate(gt, results)
  assert e.value.source == source


def test_command_line(tmp_path, capsys):
  gt = gt_json([{'segmentations': TRACK_A}], categories=(1,))
  gt_path, res_path = tmp_path / 'gt.json', tmp_path / 'res.json'
  gt_path.write_text(json.dumps(gt))
  res_path.write_text(json.dumps([res(TRACK_B, 0.9), res(TRACK_A, 0.8)]))
  evaluate.main([f'--gt={gt_path}', f'--results={res_path}', '--json'])
  stats = json.loads(capsys.readouterr().out)
  assert stats['AP'] == pytest.approx(0.5)
  evaluate.main([f'--gt={gt_path}', f'--results={res_path}'])
  table = capsys.readouterr().out
  assert 'Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.500' in table
  assert 'cat1' in table
  res_path.write_text('[{"video_id": 1,')
  with pytest.raises(SystemExit, match='res.json: not valid JSON'):
    evaluate.main([f'--gt={gt_path}', f'--results={res_path}'])
  with pytest.raises(SystemExit, match='missing.json: no such file'):
    evaluate.main(['--gt', str(tmp_path / 'missing.json'),
                   '--results', str(res_path)])


# ------------------------------------------------------------ bad input (17)
# '52' is the runs 5, 2: 7 of the 100 pixels of a 10x10 frame. pycocotools'
# mask.iou loops forever on it; it must be refused before.
SHORT_RLE = {'size': [H, W], 'counts': '52'}


@pytest.mark.parametrize('mutate, source, match', [
    (lambda g, r: r[0]['segmentations'].__setitem__(1, SHORT_RLE), 'results',
     r'results\[0\]: segmentations\[1\]: the run lengths of "counts" add up '
     r'to 7 pixels, not height x width = 10 x 10 = 100; re-encode the mask'),
    (lambda g, r: g['annotations'][0]['segmentations'].__setitem__(
        2, SHORT_RLE), 'gt',
     r'annotations\[0\] \(id 1\): segmentations\[2\]: the run lengths of '
     r'"counts" add up to 7 pixels'),
    (lambda g, r: r[0]['segmentations'][0].update(size=['10', '10']),
     'results', r'results\[0\]: segmentations\[0\]: "size" is \[\'10\', '
     r'\'10\'\], expected \[height, width\] as two positive integers'),
    (lambda g, r: r[0].update(score=float('nan')), 'results',
     r'results\[0\]: score is nan, not a finite number'),
    (lambda g, r: r[0].update(score=float('inf')), 'results',
     r'results\[0\]: score is inf, not a finite number'),
    (lambda g, r: g['videos'][0].update(length=0), 'gt',
     r'annotations\[0\] \(id 1\): has a mask in frame 2 but video 1 has 0 '
     r'frames \(its "file_names" / "length"\); fix the video\'s frame list'),
    (lambda g, r: g['annotations'][0]['segmentations'].__setitem__(
        0, {'size': [H, W], 'counts': [50, 10]}), 'gt',
     r'segmentations\[0\]: the run lengths of "counts" add up to 60 pixels'),
    (lambda g, r: g['annotations'][0]['segmentations'].__setitem__(
        0, [[1, 1, 1e15, 1, 5, 5]]), 'gt',
     r'segmentations\[0\]: polygon 0 has a coordinate far outside'),
])
def test_bad_masks_scores_and_lengths_are_refused(mutate, source, match):
  gt = gt_json([{'segmentations': [dict(s) for s in TRACK_A]}],
               categories=(1,))
  results = [res([dict(s) for s in TRACK_A], 0.9)]
  mutate(gt, results)
  for run in (evaluate.evaluate, evaluate.run_track_metrics):
    with pytest.raises(evaluate.EvaluationError, match=match) as e:
      run(gt, results)
    assert e.value.source == source


def test_command_line_never_hangs_on_a_broken_mask(tmp_path):
  """The hang of issue 17 through the command: a one-line error, exit 1,
  in seconds (the run is killed after 60 s)."""
  import os
  import subprocess
  import sys
  import time
  gt = gt_json([{'segmentations': TRACK_A}], categories=(1,))
  results = [res(TRACK_A[:1] + [SHORT_RLE] + TRACK_A[2:], 0.9)]
  gt_path, res_path = tmp_path / 'gt.json', tmp_path / 'res.json'
  gt_path.write_text(json.dumps(gt))
  res_path.write_text(json.dumps(results))
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=repo)
  for args in ([f'--gt={gt_path}', f'--results={res_path}'],
               [f'--gt={gt_path}', f'--results={tmp_path}'],
               [f'--gt={gt_path}', f'--results={res_path}',
                '--metrics=hota']):
    t = time.time()
    r = subprocess.run([sys.executable, '-m', 'iai_jax.evaluate', *args],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count('\n') == 1 and 'Traceback' not in r.stderr
    assert time.time() - t < 30
    if args[1] == f'--results={tmp_path}':
      assert r.stderr == f'error: {tmp_path}: is a directory, not a JSON file\n'
    else:
      assert r.stderr.startswith(f'error: {res_path}: results[0]: '
                                 'segmentations[1]: the run lengths')
