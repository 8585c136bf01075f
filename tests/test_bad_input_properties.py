"""Property: no annotation, results or record file makes the evaluator, the
reader, the checker or the training pipeline hang or fail with anything but
their one clean error.

Valid files are mutated at random (hypothesis: values replaced by other JSON
values, keys and list items deleted or repeated, RLE strings and sizes
rewritten); every outcome must be a result or the module's own error
(EvaluationError, VisDataError, TrainingDataError, or a Report of problems),
each within seconds. A hang inside pycocotools cannot be interrupted from
Python, so a watchdog ends the whole test process if one example runs for a
minute.
"""

import copy
import datetime
import faulthandler
import json
import math
import os
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from iai_jax import evaluate, track_metrics
from iai_jax.data import check, pipeline, vis_json
from vis_fixtures import POLY, dataset_dict, square_rle, uncompressed_rle

import train_check

SECONDS = 10  # the most one example may take
DEADLINE = datetime.timedelta(seconds=SECONDS)

RLE_ALPHABET = ''.join(chr(c) for c in range(48, 112))
KEYS = ('id', 'video_id', 'category_id', 'segmentations', 'areas', 'size',
        'counts', 'score', 'height', 'width', 'length', 'file_names',
        'iscrowd', 'occlusion', 'videos', 'annotations', 'categories', 'name')
scalars = (st.none() | st.booleans() | st.integers(-2 ** 40, 2 ** 40)
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.text(RLE_ALPHABET, max_size=24))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner,
                      max_size=4), max_leaves=8)
sizes = st.lists(st.integers(-3, 40) | st.sampled_from(['8', 8.0, None]),
                 min_size=0, max_size=3)


def _paths(node, prefix=()):
  """Every (container path, key) in a JSON document."""
  out = []
  if isinstance(node, dict):
    for k, v in node.items():
      out.append((prefix, k))
      out += _paths(v, prefix + (k,))
  elif isinstance(node, list):
    for i, v in enumerate(node):
      out.append((prefix, i))
      out += _paths(v, prefix + (i,))
  return out


def _get(doc, path):
  for k in path:
    doc = doc[k]
  return doc


def mutate(data, doc, count):
  """Apply ``count`` random mutations to ``doc`` in place."""
  for _ in range(count):
    paths = _paths(doc)
    if not paths:
      return
    parent_path, key = data.draw(st.sampled_from(paths))
    parent = _get(doc, parent_path)
    how = data.draw(st.sampled_from(
        ('value', 'value', 'delete', 'repeat', 'counts', 'size', 'string')))
    if how == 'delete':
      del parent[key]
    elif how == 'repeat' and isinstance(parent, list):
      parent.insert(key, copy.deepcopy(parent[key]))
    elif how == 'counts':
      parent[key] = {'size': data.draw(sizes),
                     'counts': data.draw(st.text(RLE_ALPHABET, max_size=30))}
    elif how == 'size':
      parent[key] = data.draw(sizes)
    elif how == 'string' and isinstance(parent[key], str):
      s = parent[key]
      cut = data.draw(st.integers(0, len(s)))
      parent[key] = s[:cut] + data.draw(st.text(RLE_ALPHABET, max_size=4))
    else:
      parent[key] = data.draw(json_values)


def _timed(fn, *args, **kwargs):
  t = time.time()
  faulthandler.dump_traceback_later(60, exit=True)  # a hang ends the run
  try:
    return fn(*args, **kwargs)
  finally:
    faulthandler.cancel_dump_traceback_later()
    assert time.time() - t < SECONDS, fn


def _gt_and_results():
  h, w = 10, 10
  masks = [np.zeros((h, w), np.uint8) for _ in range(3)]
  for f, m in enumerate(masks):
    m[f:f + 4, 2:6] = 1
  enc = [mask_utils.encode(np.asfortranarray(m)) for m in masks]
  segs = [{'size': e['size'], 'counts': e['counts'].decode()} for e in enc]
  gt = {'videos': [{'id': 1, 'height': h, 'width': w, 'length': 3,
                    'file_names': [f'v/{f}.jpg' for f in range(3)]},
                   {'id': 2, 'height': h, 'width': w, 'length': 2}],
        'categories': [{'id': 1, 'name': 'a'}, {'id': 2, 'name': 'b'}],
        'annotations': [
            {'id': 1, 'video_id': 1, 'category_id': 1, 'iscrowd': 0,
             'segmentations': segs, 'areas': [16, 16, 16]},
            {'id': 2, 'video_id': 1, 'category_id': 2, 'iscrowd': 1,
             'segmentations': [None, [[1.0, 1.0, 8.0, 1.0, 8.0, 8.0]],
                               uncompressed_rle(masks[2])],
             'areas': [None, 25, 16]},
            {'id': 3, 'video_id': 2, 'category_id': 1, 'iscrowd': 0,
             'segmentations': segs[:2], 'areas': [16, 16]}]}
  results = [{'video_id': 1, 'category_id': 1, 'score': 0.9,
              'segmentations': segs},
             {'video_id': 1, 'category_id': 2, 'score': 0.4,
              'segmentations': [None, segs[0], segs[2]]},
             {'video_id': 2, 'category_id': 1, 'score': 0.7,
              'segmentations': segs[:2]}]
  return gt, results


def _evaluate_everything(gt, results):
  evaluate.run_evaluation(gt, results)
  track_metrics.evaluate_tracks(gt, results)


def test_the_unmutated_files_are_valid():
  gt, results = _gt_and_results()
  assert evaluate.evaluate(gt, results)['AP'] > 0
  assert track_metrics.evaluate_tracks(gt, results)['HOTA'] > 0


@settings(max_examples=100, deadline=DEADLINE, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_gt_and_results_give_a_result_or_a_clean_error(data):
  gt, results = _gt_and_results()
  target = data.draw(st.sampled_from(('gt', 'results', 'both')))
  n = data.draw(st.integers(1, 3))
  if target in ('gt', 'both'):
    mutate(data, gt, n)
  if target in ('results', 'both'):
    mutate(data, results, n)
  # through JSON, as the command reads them (NaN and Infinity included)
  gt, results = json.loads(json.dumps(gt)), json.loads(json.dumps(results))
  try:
    _timed(_evaluate_everything, gt, results)
  except evaluate.EvaluationError as e:
    assert '\n' not in str(e) and str(e)
    assert e.source in ('gt', 'results')


@pytest.fixture(scope='module')
def annotation_file(tmp_path_factory):
  return str(tmp_path_factory.mktemp('ann') / 'ann.json')


@settings(max_examples=70, deadline=DEADLINE, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow,
                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_annotation_files_are_read_or_refused(annotation_file, data):
  doc = copy.deepcopy(dataset_dict())  # POLY is shared
  sq, _ = square_rle(2, 2, 3)
  doc['annotations'][0]['segmentations'][1] = sq
  mutate(data, doc, data.draw(st.integers(1, 3)))
  with open(annotation_file, 'w') as f:
    json.dump(doc, f)
  try:
    ds = _timed(vis_json.load_vis_json, annotation_file, '/nonexistent',
                check_files=False)
  except vis_json.VisDataError as e:
    assert '\n' not in str(e) and annotation_file in str(e)
  else:  # what was read decodes to masks of the video's size
    for video in ds.videos:
      for track in video.tracks:
        for seg in track.segmentations:
          if seg is not None:
            m = mask_utils.decode(seg)
            assert m.shape == (video.height, video.width)
            assert int(m.sum()) == int(mask_utils.area(seg))
  report = _timed(check.check_dataset, annotation_file, '/nonexistent', 2,
                  decode_frames=False)
  assert all('\n' not in p for p in report.problems)


@settings(max_examples=40, deadline=DEADLINE, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_record_masks_train_or_name_the_video(data):
  cfg = train_check.tiny_config(batch_size=1)
  record = train_check.records()[0]
  rles = list(record['rle'])
  k = data.draw(st.integers(0, len(rles) - 1))
  how = data.draw(st.sampled_from(('alphabet', 'bytes', 'cut')))
  if how == 'alphabet':
    rles[k] = data.draw(st.text(RLE_ALPHABET, max_size=40)).encode()
  elif how == 'bytes':
    rles[k] = data.draw(st.binary(max_size=40))
  else:
    rles[k] = rles[k][:data.draw(st.integers(0, len(rles[k])))]
  record['rle'] = np.asarray(rles, object)
  try:
    clip = _timed(pipeline.make_training_clip, record,
                  np.random.default_rng(0), cfg)
  except pipeline.TrainingDataError as e:
    assert str(e).startswith('video 7 frame ') and 'track' in str(e)
  else:
    assert clip['image'].shape[0] == cfg.train.clip_len
    assert math.isfinite(float(clip['box'].sum()))
