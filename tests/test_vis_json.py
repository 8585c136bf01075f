"""YouTube-VIS / OVIS readers, the held-out split and its ground truth."""

import json
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from iai_jax.data import vis_json
from vis_fixtures import H, W, dataset_dict, rewrite, square_rle
from vis_fixtures import uncompressed_rle, write_dataset


def _decode(rle):
  return mask_utils.decode(rle).astype(bool)


def test_reader_mask_formats_nulls_crowd_and_categories(tmp_path):
  ann, frames = write_dataset(str(tmp_path))
  ds = vis_json.load_vis_json(ann, frames)
  # categories sorted by id, labels 0..P-1, original ids and names kept
  assert ds.categories == [(3, 'cat'), (5, 'dog')]
  assert ds.category_ids == [3, 5] and ds.class_names == ['cat', 'dog']
  assert ds.frames_root == frames and [v.video_id for v in ds.videos] == [7, 9]
  v = ds.videos[0]
  assert (v.height, v.width) == (H, W)
  assert v.file_names == ['a/0.jpg', 'a/1.jpg', 'a/2.jpg']
  t0, t1 = v.tracks
  assert (t0.track_id, t0.label, t0.iscrowd) == (1, 0, False)
  assert (t1.track_id, t1.label, t1.iscrowd) == (2, 1, True)  # crowd kept
  # nulls stay None; every mask is compressed RLE of the video size
  assert t0.segmentations[1] is None and t1.segmentations[0] is None
  for seg in (t0.segmentations[0], t0.segmentations[2], t1.segmentations[1]):
    assert seg['size'] == [H, W] and isinstance(seg['counts'], bytes)
  _, square = square_rle(1, 1, 3)
  np.testing.assert_array_equal(_decode(t0.segmentations[0]), square)
  poly = _decode(t0.segmentations[2])
  expect = np.zeros((H, W), bool)
  expect[1:5, 5:9] = True  # the polygon's 4x4 pixels
  np.testing.assert_array_equal(poly, expect)
  np.testing.assert_array_equal(_decode(t1.segmentations[1]), expect)
  assert ds.videos[1].tracks == []


def test_to_rle_accepts_every_encoding_of_the_same_mask():
  _, m = square_rle(2, 3, 4)
  rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
  forms = [
      {'size': [H, W], 'counts': rle['counts']},             # bytes
      {'size': [H, W], 'counts': rle['counts'].decode()},    # str
      uncompressed_rle(m),                                   # list
      [[3.0, 2.0, 7.0, 2.0, 7.0, 6.0, 3.0, 6.0]],            # polygon
  ]
  for seg in forms:
    out = vis_json.to_rle(seg, H, W, 'here')
    assert isinstance(out['counts'], bytes)
    np.testing.assert_array_equal(_decode(out), m)


def test_ovis_occlusion_is_carried(tmp_path):
  data = dataset_dict()
  data['annotations'][0]['occlusion'] = ['no_occlusion', None,
                                         'severe_occlusion']
  ann, frames = write_dataset(str(tmp_path), data)
  track = vis_json.load_vis_json(ann, frames).videos[0].tracks[0]
  assert track.occlusion == ['no_occlusion', None, 'severe_occlusion']
  assert vis_json.load_vis_json(ann, frames).videos[0].tracks[1].occlusion is None


def _set_seg(frame, seg):
  return lambda d: d['annotations'][0]['segmentations'].__setitem__(frame, seg)


@pytest.mark.parametrize('break_it, message', [
    (lambda d: d['annotations'][0].update(category_id=99),
     r'annotations\[0\] \(id 1\): category_id 99 is not in "categories" '
     r'\(known ids: \[3, 5\]\)'),
    (lambda d: d['annotations'][0]['segmentations'].pop(),
     '"segmentations" has 2 entries but video 7 has 3 frames'),
    (lambda d: d['annotations'][1]['areas'].append(None),
     '"areas" has 4 entries but video 7 has 3 frames'),
    (_set_seg(0, {'size': [4, 4], 'counts': 'PP'}),
     r'annotation 1 frame 0: mask size \[4, 4\] does not match the video '
     r'size \[8, 10\]'),
    (_set_seg(0, {'size': [H, W], 'counts': [3, 4]}),
     r'annotation 1 frame 0: the run lengths of "counts" add up to 7 pixels, '
     r'not height x width = 8 x 10 = 80; re-encode the mask'),
    # compressed: runs 5, 2 (hand-encoded '52') cover 7 of 80 pixels
    (_set_seg(0, {'size': [H, W], 'counts': '52'}),
     r'annotation 1 frame 0: the run lengths of "counts" add up to 7 pixels, '
     r'not height x width = 8 x 10 = 80'),
    # 'P' = 0x20 | 0: a number that never ends
    (_set_seg(0, {'size': [H, W], 'counts': '5P'}),
     'annotation 1 frame 0: "counts" ends in the middle of a number'),
    (_set_seg(0, {'size': ['8', '10'], 'counts': '52'}),
     r'annotation 1 frame 0: "size" is \[\'8\', \'10\'\], expected \[height, '
     r'width\] as two positive integers'),
    (_set_seg(0, [[1.0, 1.0, float('nan'), 2.0, 3.0, 3.0]]),
     'annotation 1 frame 0: polygon 0 must be a flat list'),
    (_set_seg(0, [[1.0, 1.0, 1e12, 2.0, 3.0, 3.0]]),
     'annotation 1 frame 0: polygon 0 has a coordinate far outside the 8x10 '
     'frame'),
    (_set_seg(0, 'not a mask'), 'a mask must be a polygon list'),
    (lambda d: d['annotations'][0].update(video_id=3),
     'video_id 3 is not in "videos"'),
    (lambda d: d.pop('videos'), 'no "videos" list'),
    (lambda d: d['videos'][0].pop('height'), r'videos\[0\] has no "height"'),
    (lambda d: d['videos'].append(dict(d['videos'][0])),
     'video id 7 appears twice'),
    (lambda d: d['annotations'][0].pop('segmentations'),
     'has no "segmentations"'),
    (lambda d: d['annotations'][0].update(occlusion=['lots', None, None]),
     "occlusion value 'lots' is not one of no_occlusion"),
    (lambda d: d['categories'].append({'name': 'x'}),
     r'categories\[2\] has no integer "id"'),
])
def test_malformed_annotations_raise_with_the_file_and_the_fault(
    tmp_path, break_it, message):
  ann, frames = write_dataset(str(tmp_path))
  rewrite(ann, break_it)
  with pytest.raises(vis_json.VisDataError, match=message) as e:
    vis_json.load_vis_json(ann, frames)
  assert ann in str(e.value)


def test_missing_files_bad_json_and_missing_frames(tmp_path):
  ann, frames = write_dataset(str(tmp_path))
  missing = str(tmp_path / 'nope.json')
  with pytest.raises(vis_json.VisDataError) as e:
    vis_json.load_vis_json(missing, frames)
  assert missing in str(e.value) and 'does not exist' in str(e.value)
  assert '--config.dataset.root=' in str(e.value)
  with pytest.raises(vis_json.VisDataError,
                     match='frame folder .*nope does not exist.*dataset.root'):
    vis_json.load_vis_json(ann, str(tmp_path / 'nope'))
  for name in ('a/1.jpg', 'b/0.jpg', 'b/2.jpg'):
    os.remove(os.path.join(frames, name))
  with pytest.raises(vis_json.VisDataError) as e:
    vis_json.load_vis_json(ann, frames)
  text = str(e.value)
  assert text.startswith(f'3 frame files listed in {ann} are missing')
  for name in ('a/1.jpg', 'b/0.jpg', 'b/2.jpg'):
    assert os.path.join(frames, name) in text
  # without the frame check the annotations still load
  assert len(vis_json.load_vis_json(ann, frames, check_files=False).videos) == 2
  with open(ann, 'w') as f:
    f.write('{"videos": [')
  with pytest.raises(vis_json.VisDataError,
                     match=f'{ann} is not valid JSON: .* line 1'):
    vis_json.load_vis_json(ann, frames)


def _dataset(ids):
  return vis_json.VisDataset(
      videos=[vis_json.Video(i, 4, 4, ['x'], []) for i in ids],
      categories=[], frames_root='')


def test_heldout_split_is_deterministic_disjoint_and_as_documented():
  ids = [5, 1, 9, 3, 7, 2, 11, 4, 8, 6]
  ds = _dataset(ids)
  train, held = vis_json.heldout_split(ds, 0.3, 0)
  assert (train, held) == vis_json.heldout_split(_dataset(ids[::-1]), 0.3, 0)
  assert len(held) == 3 and not set(train) & set(held)
  assert sorted(train + held) == sorted(ids)
  assert train == sorted(train) and held == sorted(held)
  # the documented rule: sorted ids, default_rng(seed) permutation, first k
  order = np.random.default_rng(0).permutation(10)
  assert held == sorted(np.asarray(sorted(ids))[order[:3]].tolist())
  # other seeds give other splits
  assert len({tuple(vis_json.heldout_split(ds, 0.3, s)[1])
              for s in range(6)}) > 1
  assert vis_json.heldout_split(ds, 0.0, 0) == (sorted(ids), [])
  assert len(vis_json.heldout_split(ds, 0.01, 0)[1]) == 1  # at least one
  assert len(vis_json.heldout_split(_dataset([1, 2]), 0.9, 0)[1]) == 1
  assert vis_json.heldout_split(_dataset([4]), 0.5, 0) == ([4], [])
  with pytest.raises(ValueError, match='heldout_fraction'):
    vis_json.heldout_split(ds, 1.0, 0)


def test_heldout_ground_truth_keeps_the_original_annotations(tmp_path):
  data = dataset_dict()
  data['videos'].append({'id': 11, 'height': H, 'width': W, 'length': 3,
                         'file_names': ['c/0.jpg', 'c/1.jpg', 'c/2.jpg']})
  sq, _ = square_rle(0, 0, 2)
  data['annotations'].append({'id': 3, 'video_id': 11, 'category_id': 5,
                              'iscrowd': 0, 'segmentations': [None, sq, sq],
                              'areas': [None, 4, 4],
                              'bboxes': [None, [0, 0, 2, 2], [0, 0, 2, 2]]})
  ann, _ = write_dataset(str(tmp_path), data, frames=False)
  out = vis_json.write_heldout_gt(ann, [11, 7], str(tmp_path / 'gt' / 'h.json'))
  gt = json.load(open(out))
  assert [v['id'] for v in gt['videos']] == [7, 11]
  assert gt['annotations'] == [data['annotations'][i] for i in (0, 1, 2)]
  assert gt['categories'] == data['categories']
  # from a dict as well; unknown ids are an error
  assert vis_json.heldout_ground_truth(data, [9])['annotations'] == []
  with pytest.raises(vis_json.VisDataError, match=r'\[12\]'):
    vis_json.heldout_ground_truth(data, [12])
