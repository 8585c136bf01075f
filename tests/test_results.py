"""Results entries, the results-file checks and the submission zip."""

import json
import os
import re
import zipfile

import numpy as np
import pytest

from iai_jax import results as results_lib

VIDEOS = [{'id': 3, 'length': 2, 'height': 4, 'width': 5},
          {'id': 8, 'file_names': ['a.jpg', 'b.jpg', 'c.jpg'], 'height': 6,
           'width': 2}]
CATEGORY_IDS = [1, 2, 5]  # labels 0, 1, 2


def _rle(h, w, seed=0):
  m = np.random.default_rng(seed).random((h, w)) < 0.5
  return results_lib.encode_mask(m)


def _good_results():
  return [
      {'video_id': 3, 'category_id': 5, 'score': 0.7,
       'segmentations': [_rle(4, 5), None]},
      {'video_id': 8, 'category_id': 1, 'score': 0.2,
       'segmentations': [None, _rle(6, 2, 1), _rle(6, 2, 2)]},
  ]


# ----------------------------------------------------------------- entries
def test_video_results_maps_labels_to_dataset_ids():
  seg = [_rle(4, 5), None]
  tracks = [{'id': 0, 'label': 2, 'score': np.float32(0.5), 'segmentations': seg},
            {'id': 1, 'label': 0, 'score': 0.25, 'segmentations': [None, None]}]
  out = results_lib.video_results(np.int64(3), tracks, CATEGORY_IDS)
  assert [(r['video_id'], r['category_id'], r['score']) for r in out] == [
      (3, 5, 0.5), (3, 1, 0.25)]
  assert type(out[0]['video_id']) is int and type(out[0]['score']) is float
  assert out[0]['segmentations'][0] == seg[0]
  assert out[0]['segmentations'][1] is None
  assert list(out[0]) == ['video_id', 'category_id', 'score', 'segmentations']
  json.dumps(out)
  results_lib.check_results(out, VIDEOS, CATEGORY_IDS)


def test_video_results_rejects_unknown_labels():
  with pytest.raises(ValueError, match='label 3'):
    results_lib.video_results(3, [{'label': 3, 'score': 1.0,
                                   'segmentations': [None, None]}], CATEGORY_IDS)
  assert results_lib.video_results(3, [], CATEGORY_IDS) == []


# ----------------------------------------------------------------- checks
def test_good_results_pass_and_videos_without_predictions_are_allowed():
  results_lib.check_results(_good_results(), VIDEOS, CATEGORY_IDS)
  results_lib.check_results(_good_results()[:1], VIDEOS)   # video 8 has none
  results_lib.check_results([], VIDEOS)
  # a track whose frames are all null is valid (the evaluators keep it)
  results_lib.check_results([{'video_id': 8, 'category_id': 2, 'score': 1,
                              'segmentations': [None] * 3}], VIDEOS)


def _bad(mutate):
  res = _good_results()
  mutate(res)
  return res


def _set(i, key, value):
  return lambda res: res[i].__setitem__(key, value)


def _set_frame(i, f, value):
  return lambda res: res[i]['segmentations'].__setitem__(f, value)


@pytest.mark.parametrize('mutate, message', [
    (_set(0, 'video_id', 4), 'video_id 4 is not one of the videos'),
    (_set(0, 'video_id', np.int64(3)), '(int64) is not an int'),
    (_set(0, 'video_id', '3'), "video_id '3' (str) is not an int"),
    (_set(1, 'category_id', 1.0), 'category_id 1.0 (float) is not an int'),
    (_set(1, 'category_id', 3), 'category_id 3 is not a dataset category'),
    (_set(0, 'score', float('nan')), 'score nan (float) is not a finite'),
    (_set(0, 'score', np.float32(0.5)), '(float32) is not a finite'),
    (_set(0, 'score', True), 'score True (bool) is not a finite'),
    (_set(0, 'segmentations', None), 'segmentations is a NoneType'),
    (_set(1, 'segmentations', [None, None]), '2 segmentations for video 8 of 3'),
    (_set(0, 'segmentations', [None] * 3), '3 segmentations for video 3 of 2'),
    (_set_frame(0, 1, _rle(5, 4)), 'frame 1: RLE size [5, 4] is not the frame '
                                   'size [4, 5]'),
    (_set_frame(1, 2, _rle(4, 5)), 'frame 2: RLE size [4, 5]'),
    (_set_frame(1, 1, {'size': [6, 2], 'counts': b'12'}), 'counts is a bytes'),
    (_set_frame(1, 1, {'size': [6, 2], 'counts': [12]}), 'counts is a list'),
    (_set_frame(1, 1, {'counts': 'x'}), 'frame 1: not an RLE dict'),
    (_set_frame(1, 1, [1, 2, 3, 4]), 'frame 1: not an RLE dict'),
    (lambda res: res[1].pop('score'), 'results[1] lacks score'),
    (lambda res: res.append(7), 'results[2] is a int'),
])
def test_each_problem_is_reported(mutate, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    results_lib.check_results(_bad(mutate), VIDEOS, CATEGORY_IDS)


def test_problems_are_listed_together_and_capped():
  res = _good_results()
  res[0]['video_id'] = 99
  res[1]['score'] = 'high'
  with pytest.raises(ValueError) as e:
    results_lib.check_results(res, VIDEOS)
  msg = str(e.value)
  assert msg.startswith('2 problem(s)')
  assert 'video_id 99' in msg and "score 'high'" in msg
  many = [{'video_id': 1000 + i, 'category_id': 1, 'score': 1.0,
           'segmentations': []} for i in range(25)]
  with pytest.raises(ValueError, match=r'(?s)25 problem.*\.\.\. and 5 more'):
    results_lib.check_results(many, VIDEOS)


def test_check_rejects_non_lists_and_bad_videos():
  with pytest.raises(ValueError, match='must be a list'):
    results_lib.check_results({'video_id': 3}, VIDEOS)
  with pytest.raises(ValueError, match=r'videos\[0\] needs'):
    results_lib.check_results([], [{'id': 1, 'height': 2, 'width': 2}])


# ----------------------------------------------------------------- files
def test_write_submission_writes_json_and_zip(tmp_path):
  res = _good_results()
  out = tmp_path / 'sub'
  json_path, zip_path = results_lib.write_submission(res, str(out), VIDEOS)
  assert json_path == os.path.join(str(out), 'results.json')
  with open(json_path) as f:
    assert json.load(f) == res
  with zipfile.ZipFile(zip_path) as z:
    assert z.namelist() == ['results.json']
    assert json.loads(z.read('results.json')) == res
  # the masks survive the trip through the file
  m = results_lib.decode_mask(json.load(open(json_path))[0]['segmentations'][0])
  np.testing.assert_array_equal(m, results_lib.decode_mask(res[0]['segmentations'][0]))


def test_write_submission_checks_first_and_warns_on_empty(tmp_path):
  res = _good_results()
  res[0]['segmentations'].append(None)
  with pytest.raises(ValueError, match='3 segmentations'):
    results_lib.write_submission(res, str(tmp_path / 'bad'), VIDEOS)
  assert not (tmp_path / 'bad').exists()
  with pytest.warns(UserWarning, match='empty'):
    json_path, _ = results_lib.write_submission([], str(tmp_path / 'empty'),
                                                VIDEOS)
  assert json.load(open(json_path)) == []
