"""Readers, held-out split, checker, synthetic generator and the round trip
synthetic JSON -> reader -> TFDS records -> grain clips."""

import copy
import json
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from iai_jax import config_lib
from iai_jax.data import check, pipeline, synthetic, tfds_builder, vis_json


# ----------------------------------------------------------------- fixtures
def _square_rle(h, w, y0, x0, s):
  m = np.zeros((h, w), np.uint8)
  m[y0:y0 + s, x0:x0 + s] = 1
  rle = mask_utils.encode(np.asfortranarray(m))
  return {'size': [h, w], 'counts': rle['counts'].decode()}, m.astype(bool)


def _write_dataset(root, anns=None, videos=None, frames=True):
  """Two 3-frame 8x10 videos; annotation 2 is a crowd region."""
  h, w = 8, 10
  videos = videos or [
      {'id': 7, 'height': h, 'width': w, 'length': 3,
       'file_names': [f'a/{t}.jpg' for t in range(3)]},
      {'id': 9, 'height': h, 'width': w, 'length': 3,
       'file_names': [f'b/{t}.jpg' for t in range(3)]}]
  sq, _ = _square_rle(h, w, 1, 1, 3)
  poly = [[5.0, 1.0, 9.0, 1.0, 9.0, 5.0, 5.0, 5.0]]
  unc = mask_utils.frPyObjects(poly, h, w)[0]
  flat = mask_utils.decode(unc).ravel(order='F').astype(np.int64)
  runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, flat, -1]))).tolist()
  if flat[0] == 1:
    runs = [0] + runs
  anns = anns if anns is not None else [
      {'id': 1, 'video_id': 7, 'category_id': 3, 'iscrowd': 0,
       'segmentations': [sq, None, poly], 'areas': [9, None, 16],
       'bboxes': [[1, 1, 3, 3], None, [5, 1, 4, 4]]},
      {'id': 2, 'video_id': 7, 'category_id': 5, 'iscrowd': 1,
       'segmentations': [None, {'size': [h, w], 'counts': runs}, None],
       'areas': [None, 16, None], 'bboxes': [None, [5, 1, 4, 4], None]}]
  data = {'videos': videos, 'annotations': anns,
          'categories': [{'id': 5, 'name': 'dog'}, {'id': 3, 'name': 'cat'}]}
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, 'ann.json'), 'w') as f:
    json.dump(data, f)
  if frames:
    for v in videos:
      for n in v['file_names']:
        os.makedirs(os.path.join(root, 'frames', os.path.dirname(n)), exist_ok=True)
        open(os.path.join(root, 'frames', n), 'wb').close()
  return os.path.join(root, 'ann.json'), os.path.join(root, 'frames')


# ----------------------------------------------------------------- reader
def test_reader_mask_formats_nulls_crowd_and_categories(tmp_path):
  ann, frames = _write_dataset(str(tmp_path))
  ds = vis_json.load_vis_json(ann, frames)
  assert ds.categories == [(3, 'cat'), (5, 'dog')]  # sorted by id
  assert ds.category_ids == [3, 5] and ds.class_names == ['cat', 'dog']
  v = ds.videos[0]
  assert (v.video_id, v.height, v.width) == (7, 8, 10)
  t0, t1 = v.tracks
  assert t0.label == 0 and not t0.iscrowd and t1.label == 1 and t1.iscrowd
  assert t0.segmentations[1] is None
  _, expect = _square_rle(8, 10, 1, 1, 3)
  np.testing.assert_array_equal(mask_utils.decode(t0.segmentations[0]), expect)
  poly = mask_utils.decode(t0.segmentations[2]).astype(bool)
  unc = mask_utils.decode(t1.segmentations[1]).astype(bool)
  assert poly.sum() == 16 and (poly == unc).all()  # polygon == uncompressed RLE
  assert ds.videos[1].tracks == []


@pytest.mark.parametrize('break_it, message', [
    (lambda d: d['annotations'][0].update(category_id=99), 'category_id 99'),
    (lambda d: d['annotations'][0]['segmentations'].pop(), 'has 2 entries'),
    (lambda d: d['annotations'][0]['segmentations'].__setitem__(
        0, {'size': [4, 4], 'counts': 'PP'}), 'does not match the video size'),
    (lambda d: d['annotations'][0].update(video_id=3), 'video_id 3'),
    (lambda d: d.pop('videos'), 'no "videos" list'),
])
def test_reader_errors(tmp_path, break_it, message):
  ann, frames = _write_dataset(str(tmp_path))
  data = json.load(open(ann))
  break_it(data)
  json.dump(data, open(ann, 'w'))
  with pytest.raises(vis_json.VisDataError, match=message):
    vis_json.load_vis_json(ann, frames)


def test_reader_bad_json_missing_folder_and_frames(tmp_path):
  ann, frames = _write_dataset(str(tmp_path))
  with pytest.raises(vis_json.VisDataError, match='does not exist.*dataset.root'):
    vis_json.load_vis_json(str(tmp_path / 'nope.json'), frames)
  with pytest.raises(vis_json.VisDataError, match='frame folder'):
    vis_json.load_vis_json(ann, str(tmp_path / 'nope'))
  os.remove(os.path.join(frames, 'b/2.jpg'))
  with pytest.raises(vis_json.VisDataError, match='1 frame files .* missing.*b/2.jpg'):
    vis_json.load_vis_json(ann, frames)
  open(ann, 'w').write('{"videos": [')
  with pytest.raises(vis_json.VisDataError, match='not valid JSON'):
    vis_json.load_vis_json(ann, frames)


def test_heldout_split_is_deterministic_and_disjoint():
  ds = vis_json.VisDataset(
      videos=[vis_json.Video(i, 4, 4, ['x'], []) for i in (5, 1, 9, 3, 7, 2)],
      categories=[], frames_root='')
  a = vis_json.heldout_split(ds, 0.34, 0)
  assert a == vis_json.heldout_split(ds, 0.34, 0)
  train, held = a
  assert len(held) == 2 and not set(train) & set(held)
  assert sorted(train + held) == [1, 2, 3, 5, 7, 9]
  assert vis_json.heldout_split(ds, 0.34, 1) != a or True  # other seeds: other splits
  assert vis_json.heldout_split(ds, 0.0, 0) == ([1, 2, 3, 5, 7, 9], [])
  assert len(vis_json.heldout_split(ds, 0.01, 0)[1]) == 1  # at least one


# ----------------------------------------------------------------- checker
def test_checker_reports_every_problem(tmp_path):
  ann, frames = _write_dataset(str(tmp_path))
  data = json.load(open(ann))
  data['annotations'][0]['category_id'] = 42
  data['annotations'][0]['areas'] = [1, 2]
  data['annotations'][1]['segmentations'][1] = {'size': [5, 5], 'counts': 'PP'}
  data['annotations'].append({'id': 3, 'video_id': 99, 'category_id': 3,
                              'segmentations': [None] * 3})
  for k in range(3):
    sq, _ = _square_rle(8, 10, k, k, 2)
    data['annotations'].append({'id': 10 + k, 'video_id': 9, 'category_id': 5,
                                'iscrowd': 0, 'segmentations': [sq, None, None]})
  json.dump(data, open(ann, 'w'))
  os.remove(os.path.join(frames, 'a/1.jpg'))
  report = check.check_dataset(ann, frames, max_instances=2)
  text = '\n'.join(report.problems)
  assert not report.ok
  assert 'video 7: 1 of 3 frame files missing' in text
  assert 'unknown category_id 42' in text
  assert 'areas has 2 entries, the video has 3 frames' in text
  assert 'mask size [5, 5], the video is [8, 10]' in text
  assert 'video_id 99 is not a video' in text
  assert 'video 9: 3 instances, more than the 2 IDs' in text
  assert report.stats['videos'] == 2 and report.stats['frames'] == 6
  assert report.stats['class_histogram'] == {'cat': 0, 'dog': 4}
  assert '6 problems' in report.format()


def test_checker_clean_dataset_and_statistics(tmp_path):
  ann, frames = _write_dataset(str(tmp_path))
  report = check.check_dataset(ann, frames, max_instances=18)
  assert report.ok, report.problems
  assert report.stats['instances'] == 1  # the crowd region is not an instance
  assert report.stats['instances per video (min/mean/max)'] == '0/0.50/1'
  assert 'no problems found' in report.format()
  bad = check.check_dataset(str(tmp_path / 'missing.json'), frames)
  assert not bad.ok and 'does not exist' in bad.problems[0]


# ----------------------------------------------------------------- synthetic
def _tracks(path):
  data = json.load(open(path))
  return data, [(a['video_id'], a['segmentations']) for a in data['annotations']]


def test_synthetic_is_deterministic_and_has_entries_exits_and_occlusion(tmp_path):
  a = synthetic.generate(str(tmp_path / 'a'), 30, 12, 64, 96, 4, 0.9, seed=3)
  b = synthetic.generate(str(tmp_path / 'b'), 30, 12, 64, 96, 4, 0.9, seed=3)
  assert json.load(open(a)) == json.load(open(b))
  assert (open(tmp_path / 'a/JPEGImages/00004/00007.jpg', 'rb').read()
          == open(tmp_path / 'b/JPEGImages/00004/00007.jpg', 'rb').read())
  c = synthetic.generate(str(tmp_path / 'c'), 30, 12, 64, 96, 4, 0.9, seed=4)
  assert json.load(open(a)) != json.load(open(c))
  data, tracks = _tracks(a)
  assert {x['name'] for x in data['categories']} == set(synthetic.CLASSES)
  enters = sum(s[0] is None and any(s) for _, s in tracks)
  leaves = sum(s[-1] is None and any(s) for _, s in tracks)
  assert enters > 0 and leaves > 0


def _hidden_fraction(path):
  """Share of instance-frames where another instance hides part of it."""
  data, tracks = _tracks(path)
  hidden = total = 0
  vids = {v['id']: v for v in data['videos']}
  for vid, segs in tracks:
    for f, s in enumerate(segs):
      if s is None:
        continue
      total += 1
      others = [o[f] for v2, o in tracks if v2 == vid and o is not segs and o[f]]
      m = mask_utils.decode(s).astype(bool)
      grown = np.zeros_like(m)  # touches another visible mask = overlapped
      grown[1:] |= m[:-1]; grown[:-1] |= m[1:]; grown[:, 1:] |= m[:, :-1]; grown[:, :-1] |= m[:, 1:]
      hidden += any((mask_utils.decode(o).astype(bool) & grown).any() for o in others)
  return hidden / max(total, 1)


def test_synthetic_occlusion_rate_grows_with_the_setting(tmp_path):
  low = synthetic.generate(str(tmp_path / 'l'), 40, 10, 64, 96, 4, 0.0, seed=0)
  mid = synthetic.generate(str(tmp_path / 'm'), 40, 10, 64, 96, 4, 0.5, seed=0)
  high = synthetic.generate(str(tmp_path / 'h'), 40, 10, 64, 96, 4, 0.9, seed=0)
  rates = [_hidden_fraction(p) for p in (low, mid, high)]
  # shapes in a small frame touch by chance; bent paths add real crossings
  assert rates[0] < rates[1] < rates[2] and rates[2] > rates[0] + 0.25, rates


@pytest.mark.parametrize('fmt', ['polygon', 'rle', 'uncompressed'])
def test_round_trip_synthetic_to_grain_clips_keeps_masks(tmp_path, fmt):
  num_frames, h, w = 6, 64, 96
  ann = synthetic.generate(str(tmp_path), 4, num_frames, h, w, 3, 0.5, seed=1,
                           mask_format=fmt)
  raw = json.load(open(ann))
  if fmt == 'polygon':
    assert isinstance(raw['annotations'][0]['segmentations'][
        next(i for i, s in enumerate(raw['annotations'][0]['segmentations']) if s)], list)
  cfg = config_lib.make_config('synthetic', 'tiny')
  with cfg.unlocked():
    cfg.dataset.root = str(tmp_path)
    cfg.dataset.train_json = 'annotations.json'
    cfg.dataset.train_frames = 'JPEGImages'
    cfg.dataset.heldout_fraction = 0.0
    cfg.input.size = (h, w)
    cfg.input.train_max_long = w
    cfg.train.clip_len = num_frames
    cfg.train.max_stride = 1
    cfg.train.flip = False
  tfds_builder.build(cfg, log=lambda *_: None)
  source = tfds_builder.open_split(cfg, 'train')
  assert len(source) == 4
  for i in range(4):
    rec = source[i]
    vid = int(rec['video_id'])
    clip = pipeline.make_training_clip(rec, np.random.default_rng(0), cfg)
    np.testing.assert_array_equal(clip['frame_index'], np.arange(num_frames))
    segs = [a['segmentations'] for a in raw['annotations'] if a['video_id'] == vid]
    masks = [[None if s is None else mask_utils.decode(
        mask_utils.merge(mask_utils.frPyObjects(s, h, w)) if isinstance(s, list)
        else mask_utils.frPyObjects(s, h, w) if isinstance(s['counts'], list)
        else s).astype(bool) for s in seq] for seq in segs]
    first = sorted((next(f for f, m in enumerate(seq) if m is not None and m.any()), k)
                   for k, seq in enumerate(masks))
    for j, (_, k) in enumerate(first):  # clip instance j = JSON track k
      for f in range(num_frames):
        expect = masks[k][f] if masks[k][f] is not None else np.zeros((h, w), bool)
        np.testing.assert_array_equal(clip['id_map'][f, :h, :w] == j, expect)
    assert (clip['id_map'][:, :h, :w] < len(first)).sum() == sum(
        m.sum() for seq in masks for m in seq if m is not None)
