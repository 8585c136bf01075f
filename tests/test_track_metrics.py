"""iai_jax.track_metrics against the trackeval package (1.3.0) and by hand.

Each case is scored twice: by ``track_metrics.evaluate_tracks`` and by
trackeval's ``YouTubeVIS`` dataset class with its HOTA, CLEAR, Identity and
Count metrics, run in-process on JSON files written where that class looks
for them.  Every field of every class and of both class combinations must
agree to 1e-9.  The ground truth uses uncompressed RLE (the only GT mask
form trackeval reads) and carries the per-annotation ``height`` / ``width``
it needs.
"""

import contextlib
import io
import json
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils
import trackeval  # test-only dependency (setup.cfg extra "test")

from iai_jax import evaluate
from iai_jax import track_metrics

trackeval._timing.DO_TIMING = False  # pylint: disable=protected-access

H = W = 10
TOL = 1e-9


# ---------------------------------------------------------------- building


def rows(a, b, h=H, w=W):
  """Mask covering rows a..b-1 (w px a row)."""
  m = np.zeros((h, w), bool)
  m[a:b] = True
  return m


def box(y0, x0, y1, x1, h=H, w=W):
  m = np.zeros((h, w), bool)
  m[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
  return m


def uncompressed(mask):
  """Uncompressed RLE (column-major runs starting with zeros)."""
  flat = np.asarray(mask, bool).ravel(order='F').astype(np.int64)
  runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, flat, -1]))).tolist()
  if flat[0] == 1:
    runs = [0] + runs
  return {'size': list(mask.shape), 'counts': runs}


def compressed(mask):
  r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {'size': list(mask.shape), 'counts': r['counts'].decode('ascii')}


def make_gt(videos, tracks, categories=((1, 'cat1'), (2, 'cat2'))):
  """videos: [(id, name, num_frames)] or (id, name, n, h, w);
  tracks: [(ann id, video id, category id, [mask | None per frame])] or
  with a fifth item iscrowd."""
  vids, sizes = [], {}
  for v in videos:
    vid, name, n = v[:3]
    h, w = v[3:] if len(v) > 3 else (H, W)
    sizes[vid] = (h, w)
    vids.append({'id': vid, 'height': h, 'width': w, 'length': n,
                 'file_names': [f'{name}/{t:05d}.jpg' for t in range(n)]})
  anns = []
  for t in tracks:
    ann_id, vid, cat, frames = t[:4]
    crowd = t[4] if len(t) > 4 else 0
    h, w = sizes[vid]
    anns.append({
        'id': ann_id, 'video_id': vid, 'category_id': cat, 'iscrowd': crowd,
        'height': h, 'width': w, 'length': 1,
        'segmentations': [None if m is None else uncompressed(m)
                          for m in frames],
        'areas': [None if m is None else int(m.sum()) for m in frames],
        'bboxes': [None] * len(frames)})
  return {'videos': vids, 'annotations': anns,
          'categories': [{'id': c, 'name': n, 'supercategory': 'x'}
                         for c, n in categories]}


def res(vid, cat, frames, score=0.9):
  return {'video_id': vid, 'category_id': cat, 'score': score,
          'segmentations': [None if m is None else compressed(m)
                            for m in frames]}


# ---------------------------------------------------------------- trackeval


def run_trackeval(tmp_path, gt, results):
  """trackeval's YouTubeVIS evaluation -> res['COMBINED_SEQ'] (per class
  name plus 'cls_comb_cls_av' / 'cls_comb_det_av')."""
  split = 'case'
  gt_dir = tmp_path / 'gt' / f'youtube_vis_{split}'
  tr_dir = tmp_path / 'trackers' / f'youtube_vis_{split}' / 'ours' / 'data'
  gt_dir.mkdir(parents=True)
  tr_dir.mkdir(parents=True)
  (gt_dir / 'gt.json').write_text(json.dumps(gt))
  (tr_dir / 'results.json').write_text(json.dumps(results))
  eval_config = {
      'USE_PARALLEL': False, 'BREAK_ON_ERROR': True, 'RETURN_ON_ERROR': False,
      'LOG_ON_ERROR': None, 'PRINT_RESULTS': False, 'PRINT_ONLY_COMBINED':
      False, 'PRINT_CONFIG': False, 'TIME_PROGRESS': False,
      'DISPLAY_LESS_PROGRESS': True, 'OUTPUT_SUMMARY': False,
      'OUTPUT_EMPTY_CLASSES': False, 'OUTPUT_DETAILED': False,
      'PLOT_CURVES': False}
  dataset_config = {
      'GT_FOLDER': str(tmp_path / 'gt') + '/',
      'TRACKERS_FOLDER': str(tmp_path / 'trackers') + '/',
      'OUTPUT_FOLDER': str(tmp_path / 'out'), 'TRACKERS_TO_EVAL': ['ours'],
      'CLASSES_TO_EVAL': None, 'SPLIT_TO_EVAL': split, 'PRINT_CONFIG': False,
      'OUTPUT_SUB_FOLDER': '', 'TRACKER_SUB_FOLDER': 'data',
      'TRACKER_DISPLAY_NAMES': None}
  metric_config = {'THRESHOLD': 0.5, 'PRINT_CONFIG': False}
  with contextlib.redirect_stdout(io.StringIO()):
    evaluator = trackeval.Evaluator(eval_config)
    dataset = trackeval.datasets.YouTubeVIS(dataset_config)
    metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR(metric_config),
               trackeval.metrics.Identity(metric_config)]
    out, msg = evaluator.evaluate([dataset], metrics)
  assert msg['YouTubeVIS']['ours'] == 'Success'
  return out['YouTubeVIS']['ours']['COMBINED_SEQ']


MAX_DIFF = [0.0]   # largest difference seen over all compared numbers
NUM_CASES = [0]


@pytest.fixture(scope='module', autouse=True)
def _report():
  yield
  print(f'\n{NUM_CASES[0]} cases compared with trackeval, largest '
        f'difference {MAX_DIFF[0]:.3g}')


def _close(ours, theirs, where):
  ours = np.asarray(ours, np.float64)
  theirs = np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, where
  diff = float(np.max(np.abs(ours - theirs))) if ours.size else 0.0
  MAX_DIFF[0] = max(MAX_DIFF[0], diff)
  assert diff <= TOL, f'{where}: ours {ours} trackeval {theirs}'


def compare_block(family, ours, theirs, where):
  """Every field trackeval reports for one metric family."""
  for field, value in theirs.items():
    w = f'{where} {family}.{field}'
    if family == 'HOTA' and field in (track_metrics.HOTA_ARRAY_FIELDS +
                                      track_metrics.HOTA_COUNT_FIELDS):
      _close(ours['per_alpha'][field], value, w)
      if field in track_metrics.HOTA_ARRAY_FIELDS:
        _close(ours[field], np.mean(value), w + ' (alpha mean)')
    else:
      _close(ours[field], value, w)


def check_case(tmp_path, gt, results, **kwargs):
  """evaluate_tracks == trackeval on every class and both combinations."""
  ours = track_metrics.evaluate_tracks(gt, results, **kwargs)
  if kwargs.get('score_threshold') is not None:
    results = [r for r in results if r['score'] >= kwargs['score_threshold']]
  theirs = run_trackeval(tmp_path, gt, results)
  families = ('HOTA', 'CLEAR', 'Identity', 'Count')
  names = [c['name'] for c in gt['categories']]
  assert sorted(ours['per_class']) == sorted(names)
  for name in names:
    for family in families:
      compare_block(family, ours['per_class'][name][family],
                    theirs[name][family], name)
  for key, theirs_key in (('class_averaged', 'cls_comb_cls_av'),
                          ('detection_averaged', 'cls_comb_det_av')):
    for family in families:
      compare_block(family, ours[key][family], theirs[theirs_key][family], key)
  # the headline keys are the class-averaged values
  for family, keys in track_metrics.HEADLINE_KEYS.items():
    for k in keys:
      assert ours[k] == ours['class_averaged'][family][k]
  NUM_CASES[0] += 1
  return ours


# ---------------------------------------------------------------- hand-made

A, B = rows(0, 3), rows(5, 8)       # two disjoint objects
VID1 = [(1, 'v1', 4)]
ONE = ((1, 'cat1'),)                # a single category: headline = its values


def test_empty_predictions(tmp_path):
  gt = make_gt(VID1, [(1, 1, 1, [A, A, A, A]), (2, 1, 2, [B, B, None, B])])
  out = check_case(tmp_path, gt, [])
  assert out['HOTA'] == 0 and out['IDF1'] == 0 and out['MOTA'] == 0
  assert out['class_averaged']['CLEAR']['ML'] == 2


def test_perfect_tracking(tmp_path):
  gt = make_gt(VID1, [(1, 1, 1, [A, A, A, A]), (2, 1, 2, [B, B, None, B])])
  out = check_case(tmp_path, gt, [res(1, 1, [A, A, A, A]),
                                  res(1, 2, [B, B, None, B])])
  for k in ('HOTA', 'DetA', 'AssA', 'LocA', 'IDF1', 'MOTA', 'MOTP'):
    assert out[k] == 1.0, k
  assert out['IDSW'] == 0 and out['Frag'] == 0


def test_id_swap_by_hand(tmp_path):
  # X follows A for two frames then B; Y the other way round.  Identity:
  # each GT-tracker pair agrees on 2 frames, so the best pairing keeps
  # IDTP = 2 + 2 = 4 of the 8 GT and 8 tracker detections: IDFN = IDFP = 4,
  # IDF1 = 4 / (4 + 4/2 + 4/2) = 0.5.  CLEAR: every detection is matched
  # (TP 8, IoU 1); in frame 2 both GTs change tracker: IDSW = 2, MOTA =
  # (8 - 0 - 2) / 8 = 0.75.  HOTA: DetA = 1 at every alpha; each of the 4
  # (GT, tracker) pairs has 2 matches out of 4 + 4 - 2 = 6 frames, AssA =
  # 1/3, HOTA = sqrt(1/3).
  gt = make_gt(VID1, [(1, 1, 1, [A] * 4), (2, 1, 1, [B] * 4)], ONE)
  out = check_case(tmp_path, gt, [res(1, 1, [A, A, B, B]),
                                  res(1, 1, [B, B, A, A])])
  assert out['IDF1'] == pytest.approx(0.5, abs=1e-15)
  cls = out['per_class']['cat1']
  assert (cls['Identity']['IDTP'], cls['Identity']['IDFN'],
          cls['Identity']['IDFP']) == (4, 4, 4)
  assert cls['CLEAR']['IDSW'] == 2
  assert cls['CLEAR']['MOTA'] == pytest.approx(0.75, abs=1e-15)
  assert cls['HOTA']['DetA'] == pytest.approx(1.0, abs=1e-15)
  assert cls['HOTA']['AssA'] == pytest.approx(1 / 3, abs=1e-15)
  assert cls['HOTA']['HOTA'] == pytest.approx(math.sqrt(1 / 3), abs=1e-15)


def test_track_split_in_two_by_hand(tmp_path):
  # A tracked by X in frames 0-1 and by Y in frames 2-3 (masks exact).
  # IDTP = 2 (the better of X, Y), IDFN = IDFP = 2, IDF1 = 2 / (2 + 1 + 1) =
  # 0.5; one ID switch, no fragmentation (A is tracked in every frame),
  # MOTA = (4 - 1) / 4; AssA = (2 * 2/4 + 2 * 2/4) / 4 = 0.5.
  gt = make_gt(VID1, [(1, 1, 1, [A] * 4)])
  out = check_case(tmp_path, gt, [res(1, 1, [A, A, None, None]),
                                  res(1, 1, [None, None, A, A])])
  cls = out['per_class']['cat1']
  assert cls['Identity']['IDF1'] == pytest.approx(0.5, abs=1e-15)
  assert (cls['CLEAR']['IDSW'], cls['CLEAR']['Frag']) == (1, 0)
  assert cls['CLEAR']['MOTA'] == pytest.approx(0.75, abs=1e-15)
  assert cls['HOTA']['AssA'] == pytest.approx(0.5, abs=1e-15)


def test_gap_fragmentation_quirk(tmp_path):
  # A is absent in frames 2-3 and tracked perfectly before and after.
  # Alone in the video: no GT and no tracker detection in frames 2-3, so
  # TrackEval's "previous frame" stays at frame 1 and A is not fragmented.
  # With B visible (and tracked) in frames 2-3, the previous frame moves on
  # and A's return counts as a fragmentation.
  frames = [A, A, None, None, A, A]
  gt = make_gt([(1, 'v1', 6)], [(1, 1, 1, frames)], ONE)
  out = check_case(tmp_path, gt, [res(1, 1, frames)])
  assert out['HOTA'] == 1.0 and out['Frag'] == 0
  gt = make_gt([(1, 'v1', 6)], [(1, 1, 1, frames), (2, 1, 1, [B] * 6)], ONE)
  out = check_case(tmp_path / 'b', gt, [res(1, 1, frames), res(1, 1, [B] * 6)])
  assert out['HOTA'] == 1.0 and out['Frag'] == 1 and out['IDSW'] == 0


def test_missed_frame_fragmentation_quirk(tmp_path):
  # A present throughout but missed by its tracker in frame 2.  Without any
  # other tracker detection in that frame no fragmentation is counted; with
  # a detection of B there it is.
  gt = make_gt(VID1, [(1, 1, 1, [A] * 4), (2, 1, 1, [B] * 4)], ONE)
  a_track = res(1, 1, [A, A, None, A])
  out = check_case(tmp_path, gt, [a_track])
  assert out['Frag'] == 0
  out = check_case(tmp_path / 'b', gt, [a_track, res(1, 1, [B] * 4)])
  assert out['Frag'] == 1


def test_false_positive_track(tmp_path):
  gt = make_gt(VID1, [(1, 1, 1, [A] * 4)])
  check_case(tmp_path, gt, [res(1, 1, [A] * 4),
                            res(1, 1, [None, B, B, None], 0.3)])


def test_two_categories_partly_right(tmp_path):
  gt = make_gt(VID1, [(1, 1, 1, [A] * 4), (2, 1, 2, [B] * 4)])
  check_case(tmp_path, gt, [res(1, 1, [A, A, rows(0, 2), A]),
                            res(1, 2, [B, rows(4, 8), B, None])])


def test_wrong_category_and_multi_category_track(tmp_path):
  # B reported as category 1 (wrong) and A reported with both categories:
  # each entry is a tracker ID of its own class.
  gt = make_gt(VID1, [(1, 1, 1, [A] * 4), (2, 1, 2, [B] * 4)])
  out = check_case(tmp_path, gt, [res(1, 1, [B] * 4), res(1, 1, [A] * 4, 0.8),
                                  res(1, 2, [A] * 4, 0.2)])
  assert out['per_class']['cat2']['Identity']['IDTP'] == 0


def test_several_videos_and_categories_without_data(tmp_path):
  # Video names sort differently from their ids; category 3 has no GT and no
  # result (it counts in the class average, quirk Q4); video 9 is empty.
  gt = make_gt([(5, 'zz', 3), (2, 'aa', 5), (9, 'mm', 2)],
               [(11, 5, 1, [A, A, None]), (3, 2, 1, [B] * 5),
                (4, 2, 2, [None, A, A, A, None])],
               categories=((2, 'two'), (1, 'one'), (3, 'three')))
  out = check_case(tmp_path, gt, [
      res(2, 1, [B, B, B, rows(5, 7), rows(5, 7)]), res(5, 1, [A, A, A]),
      res(2, 2, [A, A, A, None, None]), res(9, 2, [B, B])])
  assert out['per_class']['three']['HOTA']['LocA'] == 1.0
  assert out['class_averaged']['HOTA']['HOTA'] < out['detection_averaged'][
      'HOTA']['HOTA']


def test_crowd_ground_truth_is_an_ordinary_track(tmp_path):
  gt = make_gt(VID1, [(1, 1, 1, [A] * 4, 1), (2, 1, 1, [B] * 4)])
  out = check_case(tmp_path, gt, [res(1, 1, [B] * 4)])
  assert out['per_class']['cat1']['Identity']['IDFN'] == 4


def test_duplicate_predictions_ties(tmp_path):
  # Two identical result tracks (and a GT-side tie: two GTs the same mask
  # overlaps equally): the Hungarian tie-breaking follows the file order.
  left, right = box(0, 0, 4, 5), box(0, 5, 4, 10)
  gt = make_gt(VID1, [(7, 1, 1, [left] * 4), (3, 1, 1, [right] * 4)])
  both = box(0, 0, 4, 10)
  check_case(tmp_path, gt, [res(1, 1, [left] * 4), res(1, 1, [left] * 4),
                            res(1, 1, [both, both, right, right])])


def test_clear_tie_follows_results_order(tmp_path):
  # Two results equal to A in frame 0; only the second goes on.  CLEAR's
  # frame-0 matching is a tie that scipy resolves towards the first column
  # (the earlier result in the file): an ID switch in frame 1 if that one
  # stops, none if the continuing one comes first.
  gt = make_gt(VID1, [(1, 1, 1, [A] * 4)], ONE)
  short, full = res(1, 1, [A, None, None, None]), res(1, 1, [A] * 4)
  assert check_case(tmp_path / 'a', gt, [short, full])['IDSW'] == 1
  assert check_case(tmp_path / 'b', gt, [full, short])['IDSW'] == 0


def test_partial_overlaps_and_alpha_thresholds(tmp_path):
  # IoUs spread over the alphas: 0.5 exactly, 0.7, 0.3, 0.9.
  gt = make_gt(VID1, [(1, 1, 1, [rows(0, 10)] * 4)])
  check_case(tmp_path, gt, [res(1, 1, [rows(0, 5), rows(0, 7), rows(0, 3),
                                       rows(0, 9)])])


def test_all_null_prediction_and_short_video(tmp_path):
  gt = make_gt([(1, 'v1', 1), (2, 'v2', 3)],
               [(1, 1, 1, [A]), (2, 2, 2, [None, None, None])])
  check_case(tmp_path, gt, [res(1, 1, [None]), res(2, 2, [None, B, None])])


def test_score_threshold_drops_low_scores(tmp_path):
  gt = make_gt(VID1, [(1, 1, 1, [A] * 4)], ONE)
  results = [res(1, 1, [A] * 4, 0.9), res(1, 1, [A, A, None, None], 0.1)]
  out = check_case(tmp_path, gt, results, score_threshold=0.5)
  assert out['HOTA'] == 1.0
  assert track_metrics.evaluate_tracks(gt, results)['HOTA'] < 1.0


# ---------------------------------------------------------------- random


def _random_mask(rng, h, w):
  y0, x0 = rng.integers(0, h - 3), rng.integers(0, w - 3)
  return box(y0, x0, y0 + rng.integers(3, h // 2 + 2),
             x0 + rng.integers(3, w // 2 + 2), h, w)


def _jitter(rng, m):
  """Often shifted by a pixel, sometimes grown or cut by a row."""
  out = m
  if rng.random() < 0.5:
    out = np.roll(m, (rng.integers(-1, 2), rng.integers(-1, 2)), axis=(0, 1))
  r = rng.random()
  if r < 0.2:
    out = out | np.roll(out, 1, axis=0)
  elif r < 0.3:
    ys = np.flatnonzero(out.any(1))
    if len(ys) > 1:
      out = out.copy()
      out[ys[-1]] = False
  return out


def random_case(seed):
  """Small random videos: moving boxes with gaps and late entries, and
  predictions made of jittered pieces of them (tracks split, tails swapped
  between two tracks, exact duplicates, wrong categories, missed objects)
  plus random false positives."""
  rng = np.random.default_rng(seed)
  cat_ids = [int(c) for c in rng.permutation([1, 2, 5])[:rng.integers(1, 4)]]
  categories = [(c, f'c{c}') for c in cat_ids]
  videos, tracks, results = [], [], []
  ann_ids = iter(rng.permutation(np.arange(1, 60)).tolist())
  # distinct ids and folder names (trackeval keys videos by folder name),
  # in unrelated orders
  names = iter(rng.permutation(['cc', 'aa', 'bb', 'dd']).tolist())
  for v in range(int(rng.integers(1, 4))):
    vid = int(rng.integers(1, 100)) * 3 + v
    h, w = int(rng.integers(12, 21)), int(rng.integers(12, 21))
    n = int(rng.integers(3, 11))
    videos.append((vid, next(names), n, h, w))
    objects = []
    for _ in range(int(rng.integers(0, 6))):
      start = _random_mask(rng, h, w)
      vy, vx = rng.integers(-1, 2), rng.integers(-1, 2)
      first = int(rng.integers(0, n)) if rng.random() < 0.4 else 0
      frames = []
      for t in range(n):
        present = t >= first and rng.random() < 0.85
        frames.append(np.roll(start, (vy * t, vx * t), axis=(0, 1))
                      if present else None)
      cat = int(rng.choice(cat_ids))
      crowd = int(rng.random() < 0.1)
      tracks.append((next(ann_ids), vid, cat, frames, crowd))
      objects.append((cat, frames))
    preds = []
    for cat, frames in objects:
      if rng.random() < 0.1:
        continue
      num_cuts = int(rng.choice(3, p=[0.6, 0.3, 0.1]))
      cuts = sorted(rng.integers(1, n, num_cuts).tolist())
      for a, b in zip([0] + cuts, cuts + [n]):
        if a == b:
          continue
        seg = [None] * n
        for t in range(a, b):
          if frames[t] is not None and rng.random() < 0.9:
            seg[t] = _jitter(rng, frames[t])
        c = cat if rng.random() < 0.85 else int(rng.choice(cat_ids))
        preds.append([c, seg])
    if len(preds) >= 2 and rng.random() < 0.5:   # swap tails of two tracks
      i, j = rng.choice(len(preds), 2, replace=False)
      t0 = int(rng.integers(0, n))
      preds[i][1][t0:], preds[j][1][t0:] = preds[j][1][t0:], preds[i][1][t0:]
    for _ in range(int(rng.choice(3, p=[0.5, 0.35, 0.15]))):  # false positives
      seg = [_random_mask(rng, h, w) if rng.random() < 0.5 else None
             for _ in range(n)]
      preds.append([int(rng.choice(cat_ids)), seg])
    if preds and rng.random() < 0.3:               # an exact duplicate
      k = int(rng.integers(0, len(preds)))
      preds.append([preds[k][0], list(preds[k][1])])
    rng.shuffle(preds)
    for c, seg in preds:
      results.append(res(vid, c, seg, float(rng.choice([0.5, rng.random()]))))
  rng.shuffle(tracks)
  return make_gt(videos, tracks, categories), results


@pytest.mark.parametrize('seed', range(24))
def test_random_cases_equal_trackeval(tmp_path, seed):
  gt, results = random_case(seed)
  check_case(tmp_path, gt, results)


# ---------------------------------------------------------------- API / CLI


def test_run_track_metrics_and_ap_are_independent():
  gt = make_gt(VID1, [(1, 1, 1, [A] * 4)])
  results = [res(1, 1, [A, A, None, None]), res(1, 1, [None, None, A, A])]
  out = evaluate.run_track_metrics(gt, results)
  assert out == track_metrics.evaluate_tracks(gt, results)
  assert set(track_metrics.METRIC_FAMILIES) <= set(out['class_averaged'])


def test_gt_mask_formats_agree():
  # trackeval reads only uncompressed RLE; compressed RLE and polygons (as
  # iai_jax.evaluate accepts them) must give the same numbers.
  gt, results = random_case(7)
  alt = json.loads(json.dumps(gt))
  for ann in alt['annotations']:
    ann['segmentations'] = [
        None if s is None else
        compressed(mask_utils.decode(mask_utils.frPyObjects(s, *s['size'])))
        for s in ann['segmentations']]
  square = box(2, 2, 6, 6)
  poly = [[2.0, 2.0, 6.0, 2.0, 6.0, 6.0, 2.0, 6.0]]
  poly_mask = mask_utils.decode(
      mask_utils.merge(mask_utils.frPyObjects(poly, H, W))).astype(bool)
  gt1 = make_gt(VID1, [(1, 1, 1, [poly_mask] * 4)], ONE)
  gt2 = json.loads(json.dumps(gt1))
  gt2['annotations'][0]['segmentations'] = [poly] * 4
  preds = [res(1, 1, [square, square, poly_mask, None])]
  assert (track_metrics.evaluate_tracks(alt, results) ==
          track_metrics.evaluate_tracks(gt, results))
  assert (track_metrics.evaluate_tracks(gt2, preds) ==
          track_metrics.evaluate_tracks(gt1, preds))


def test_mismatched_mask_sizes_raise():
  gt = make_gt(VID1, [(1, 1, 1, [A] * 4)])
  small = rows(0, 3, 10, 8)
  with pytest.raises(evaluate.EvaluationError, match='differ in size'):
    track_metrics.evaluate_tracks(gt, [res(1, 1, [small] * 4)])


def test_command_line_metrics_flag(tmp_path, capsys):
  gt = make_gt(VID1, [(1, 1, 1, [A] * 4), (2, 1, 1, [B] * 4)], ONE)
  gt_path, res_path = tmp_path / 'gt.json', tmp_path / 'res.json'
  gt_path.write_text(json.dumps(gt))
  res_path.write_text(json.dumps([res(1, 1, [A, A, B, B]),
                                  res(1, 1, [B, B, A, A])]))
  args = [f'--gt={gt_path}', f'--results={res_path}']
  evaluate.main(args + ['--json'])
  ap_only = json.loads(capsys.readouterr().out)
  assert list(ap_only) == list(evaluate.YTVIS_KEYS)
  evaluate.main(args + ['--json', '--metrics=ap,hota,idf1,clear'])
  both = json.loads(capsys.readouterr().out)
  assert {k: both[k] for k in evaluate.YTVIS_KEYS} == ap_only
  assert both['IDF1'] == pytest.approx(0.5)
  assert both['IDSW'] == 2
  assert both['HOTA'] == pytest.approx(math.sqrt(1 / 3))
  assert set(both['track_metrics']['class_averaged']) == {
      'HOTA', 'Identity', 'CLEAR', 'Count'}
  evaluate.main(args + ['--metrics=hota'])
  text = capsys.readouterr().out
  assert 'Average Precision' not in text and 'HOTA' in text
  assert 'IDF1' not in text
  evaluate.main(args + ['--metrics=ap,track'])
  text = capsys.readouterr().out
  assert 'Average Precision' in text
  assert 'HOTA' in text and 'IDF1' in text and 'MOTA' in text
  with pytest.raises(SystemExit):
    evaluate.main(args + ['--metrics=ap,nope'])
