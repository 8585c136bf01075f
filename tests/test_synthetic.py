"""The synthetic video generator, and the round trip synthetic JSON -> reader
-> TFDS records -> grain clips that must give back the masks exactly."""

import json
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from iai_jax import config_lib
from iai_jax.data import paths, pipeline, synthetic, tfds_builder, vis_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _json(path):
  with open(path) as f:
    return json.load(f)


def _masks_from_json(seq, h, w):
  """Per-frame bool masks (None where absent), decoded with pycocotools only."""
  out = []
  for s in seq:
    if s is None:
      out.append(None)
    elif isinstance(s, list):
      out.append(mask_utils.decode(mask_utils.merge(
          mask_utils.frPyObjects(s, h, w))).astype(bool))
    elif isinstance(s['counts'], list):
      out.append(mask_utils.decode(mask_utils.frPyObjects(s, h, w)).astype(bool))
    else:
      out.append(mask_utils.decode(s).astype(bool))
  return out


def test_same_seed_same_files_other_seed_other_videos(tmp_path):
  args = (12, 8, 48, 64, 4, 0.5)
  a = synthetic.generate(str(tmp_path / 'a'), *args, seed=3)
  b = synthetic.generate(str(tmp_path / 'b'), *args, seed=3)
  c = synthetic.generate(str(tmp_path / 'c'), *args, seed=4)
  assert _json(a) == _json(b) and _json(a) != _json(c)
  for v in _json(a)['videos']:
    for name in v['file_names']:
      fa = open(tmp_path / 'a' / 'JPEGImages' / name, 'rb').read()
      assert fa == open(tmp_path / 'b' / 'JPEGImages' / name, 'rb').read()
  # video i depends on (seed, i) only: a longer dataset starts the same way
  d = synthetic.generate(str(tmp_path / 'd'), 14, *args[1:], seed=3)
  assert _json(d)['videos'][:12] == _json(a)['videos']
  assert [x for x in _json(d)['annotations'] if x['video_id'] <= 12] == \
      _json(a)['annotations']


def test_layout_classes_sizes_and_instances_entering_and_leaving(tmp_path):
  ann = synthetic.generate(str(tmp_path), 30, 12, 64, 96, 4, 0.5, seed=0)
  assert ann == os.path.join(str(tmp_path), 'annotations.json')
  data = _json(ann)
  assert [c['name'] for c in data['categories']] == list(synthetic.CLASSES)
  assert len(data['videos']) == 30
  for v in data['videos']:
    assert (v['height'], v['width'], v['length']) == (64, 96, 12)
    assert v['file_names'][3] == f'{v["id"] - 1:05d}/00003.jpg'
    assert os.path.isfile(tmp_path / 'JPEGImages' / v['file_names'][3])
  per_video = {}
  enters = leaves = 0
  for a in data['annotations']:
    per_video[a['video_id']] = per_video.get(a['video_id'], 0) + 1
    present = [s is not None for s in a['segmentations']]
    assert any(present) and len(present) == 12
    # bookkeeping agrees with the masks; occlusion is null exactly when absent
    assert [x is not None for x in a['areas']] == present
    assert [x is not None for x in a['occlusion']] == present
    masks = _masks_from_json(a['segmentations'], 64, 96)
    for m, area, box in zip(masks, a['areas'], a['bboxes']):
      if m is not None:
        ys, xs = np.nonzero(m)
        assert area == m.sum()
        assert box == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
    enters += not present[0]
    leaves += not present[-1]
  assert enters >= 3 and leaves >= 3
  assert max(per_video.values()) <= 4 and min(per_video.values()) >= 1
  assert len(set(a['category_id'] for a in data['annotations'])) == 4
  # the painted frames differ from one frame to the next (things move)
  from PIL import Image
  f0, f5 = (np.asarray(Image.open(tmp_path / 'JPEGImages' / f'00000/0000{t}.jpg'),
                       np.float32) for t in (0, 5))
  assert np.abs(f0 - f5).mean() > 2


def _overlap_stats(path):
  """(share of instance-frames touching another instance, share labelled
  occluded) of a generated dataset."""
  data = _json(path)
  by_video = {}
  for a in data['annotations']:
    by_video.setdefault(a['video_id'], []).append(a)
  touching = occluded = total = 0
  for anns in by_video.values():
    h, w = anns[0]['height'], anns[0]['width']
    masks = [_masks_from_json(a['segmentations'], h, w) for a in anns]
    for k, a in enumerate(anns):
      for f, m in enumerate(masks[k]):
        if m is None:
          continue
        total += 1
        occluded += a['occlusion'][f] != 'no_occlusion'
        grown = m.copy()  # the mask and its 4-neighbours
        grown[1:] |= m[:-1]
        grown[:-1] |= m[1:]
        grown[:, 1:] |= m[:, :-1]
        grown[:, :-1] |= m[:, 1:]
        touching += any(o[f] is not None and (o[f] & grown).any()
                        for j, o in enumerate(masks) if j != k)
  return touching / total, occluded / total


def test_overlap_rate_grows_with_occlusion(tmp_path):
  rates = [_overlap_stats(synthetic.generate(
      str(tmp_path / str(o)), 30, 8, 48, 64, 4, o, seed=0))
           for o in (0.0, 0.5, 1.0)]
  touching = [r[0] for r in rates]
  occluded = [r[1] for r in rates]
  assert touching[0] < touching[1] < touching[2]
  assert occluded[0] < occluded[1] < occluded[2]
  # occlusion 0: paths keep clear where they can; 1: every one crosses
  assert touching[0] < 0.15 and touching[2] > 0.6 and occluded[2] > 0.3


@pytest.mark.parametrize('fmt, kind', [('polygon', list), ('rle', str),
                                       ('uncompressed', list)])
def test_mask_formats_store_the_same_kind_of_masks(tmp_path, fmt, kind):
  ann = synthetic.generate(str(tmp_path), 3, 4, 32, 48, 3, 0.5, seed=2,
                           mask_format=fmt)
  segs = [s for a in _json(ann)['annotations'] for s in a['segmentations']
          if s is not None]
  for s in segs:
    counts = s if fmt == 'polygon' else s['counts']
    assert isinstance(counts, kind)
  ds = vis_json.load_vis_json(ann, str(tmp_path / 'JPEGImages'))
  assert sum(len(v.tracks) for v in ds.videos) == len(_json(ann)['annotations'])
  with pytest.raises(ValueError, match='mask_format'):
    synthetic.generate(str(tmp_path), 1, 2, 32, 48, 1, 0.5, 0, 'png')


def test_synthetic_is_generated_once_and_the_occluded_variant(tmp_path):
  config = config_lib.load_config_file(
      os.path.join(REPO, 'configs', 'synthetic.py'))
  occluded = config_lib.load_config_file(
      os.path.join(REPO, 'configs', 'synthetic.py') + ':occluded')
  assert occluded.dataset.synthetic.occlusion > config.dataset.synthetic.occlusion
  assert occluded.dataset.root != config.dataset.root
  assert occluded.dataset.name != config.dataset.name
  with config.unlocked():
    config.dataset.root = str(tmp_path)
    config.dataset.synthetic.num_videos = 2
    config.dataset.synthetic.num_frames = 3
  logs = []
  ann = paths.ensure_annotations(config, log=logs.append)
  assert ann == str(tmp_path / 'train' / 'annotations.json')
  assert len(logs) == 1 and 'generating the synthetic dataset' in logs[0]
  assert os.path.isdir(tmp_path / 'train' / 'JPEGImages' / '00001')
  assert len(_json(ann)['videos']) == 2
  assert paths.ensure_annotations(config, log=logs.append) == ann
  assert len(logs) == 1  # present: not generated again


@pytest.mark.parametrize('fmt', ['polygon', 'rle', 'uncompressed'])
def test_round_trip_synthetic_to_grain_clips_keeps_masks(tmp_path, fmt):
  """JSON masks == the training pipeline's id_map (no flip, no resize)."""
  num_videos, num_frames, h, w = 4, 6, 64, 96
  ann = synthetic.generate(str(tmp_path), num_videos, num_frames, h, w, 3, 0.7,
                           seed=1, mask_format=fmt)
  raw = _json(ann)
  cfg = config_lib.make_config('synthetic', 'tiny')
  with cfg.unlocked():
    cfg.dataset.root = str(tmp_path)
    cfg.dataset.train_json = 'annotations.json'
    cfg.dataset.train_frames = 'JPEGImages'
    cfg.dataset.heldout_fraction = 0.25
    cfg.input.size = (h, w)
    cfg.train.clip_len = num_frames
    cfg.train.max_stride = 1
    cfg.train.flip = False
    cfg.train.batch_size = 1
  tfds_builder.build(cfg, log=lambda *_: None)
  train = tfds_builder.open_split(cfg, 'train')
  heldout = tfds_builder.open_split(cfg, 'heldout')
  expect_train, expect_held = vis_json.heldout_split(
      vis_json.load_vis_json(ann, str(tmp_path / 'JPEGImages')), 0.25, 0)
  assert sorted(int(train[i]['video_id']) for i in range(len(train))) == \
      expect_train
  assert [int(heldout[0]['video_id'])] == expect_held

  clips = {}
  it = iter(pipeline.training_dataset(cfg, train, seed=0))
  while len(clips) < len(train):
    batch = next(it)
    clips[int(batch['video_id'][0])] = {k: v[0] for k, v in batch.items()}
  clips[expect_held[0]] = pipeline.make_training_clip(
      heldout[0], np.random.default_rng(0), cfg)

  checked = 0
  for vid, clip in clips.items():
    anns = sorted((a for a in raw['annotations'] if a['video_id'] == vid),
                  key=lambda a: a['id'])
    masks = [_masks_from_json(a['segmentations'], h, w) for a in anns]
    # only frames with an instance are drawn; with stride 1 and clips as
    # long as the video: all of them, repeated cyclically when too few
    valid = [f for f in range(num_frames)
             if any(m[f] is not None for m in masks)]
    expect_idx = [valid[i % len(valid)] for i in range(num_frames)]
    np.testing.assert_array_equal(clip['frame_index'], expect_idx)
    np.testing.assert_array_equal(clip['image_size'], [[h, w]] * num_frames)
    # clip instances are numbered in ascending annotation (track) id order
    id_map = clip['id_map'][:, :h, :w]
    for j, seq in enumerate(masks):
      for t, f in enumerate(expect_idx):
        expect = seq[f] if seq[f] is not None else np.zeros((h, w), bool)
        np.testing.assert_array_equal(id_map[t] == j, expect)
        np.testing.assert_array_equal(clip['mask4'][t, j],
                                      expect[2::4, 2::4])
        checked += 1
    assert ((id_map < len(masks)) | (id_map == pipeline.BACKGROUND)).all()
    # the frames are the JPEGs of the dataset, pixel for pixel
    video = next(v for v in raw['videos'] if v['id'] == vid)
    for t in (0, num_frames - 1):
      f = expect_idx[t]
      jpeg = open(tmp_path / 'JPEGImages' / video['file_names'][f], 'rb').read()
      np.testing.assert_array_equal(clip['image'][t, :h, :w],
                                    pipeline.decode_jpeg(jpeg))
  assert checked > 0


def test_reid_split_has_gaps_crossings_fast_movers_and_late_entries(tmp_path):
  """configs/synthetic.py:reid: every video has a track hidden behind the
  occluder and one out of the picture for 3-15 frames (one GT track across
  the gap), a pair of look-alikes (same class and shape, other colour) whose
  masks touch, a fast track whose consecutive masks hardly overlap, and a
  track that enters mid-video - checked on the JSON masks, and the
  generator's own account ('reid' entries) agrees."""
  config = config_lib.load_config_file(
      os.path.join(REPO, 'configs', 'synthetic.py') + ':reid')
  assert config.dataset.synthetic.kind == 'reid'
  assert config.dataset.synthetic.num_frames >= 48
  assert config.dataset.name == 'synthetic_reid'
  assert config.train.clip_len == 8  # training clips that span the gaps
  with config.unlocked():
    config.dataset.root = str(tmp_path)
    config.dataset.synthetic.num_videos = 6
  ann = paths.ensure_annotations(config, log=lambda *_: None)
  data = _json(ann)
  h, w = config.dataset.synthetic.height, config.dataset.synthetic.width
  by_video = {}
  for a in data['annotations']:
    by_video.setdefault(a['video_id'], []).append(a)
  assert len(by_video) == 6
  for vid, anns in by_video.items():
    roles = {}
    for a in anns:
      masks = np.stack([m if m is not None else np.zeros((h, w), bool)
                        for m in _masks_from_json(a['segmentations'], h, w)])
      vis = masks.reshape(len(masks), -1).any(1)
      frames = np.flatnonzero(vis)
      gaps = [int(b - a_ - 1) for a_, b in zip(frames[:-1], frames[1:])
              if b > a_ + 1]
      # the generator's account is what the masks say
      r = a['reid']
      assert [e - s for s, e in r['gaps']] == gaps
      assert r['first_frame'] == frames[0]
      roles.setdefault(r['role'], []).append((a, masks, gaps, frames))
    for role in ('occluded', 'exit'):
      (a, _, gaps, _), = roles[role]
      assert any(3 <= g <= 15 for g in gaps), (vid, role, gaps)
    (a1, m1, _, _), (a2, m2, _, _) = roles['look_alike']
    assert a1['category_id'] == a2['category_id']
    assert a1['reid']['look_alike_of'] == a2['id']
    touch = [(m1[t] & np.roll(m2[t], 1, axis=1) | m1[t] & m2[t]
              | m1[t] & np.roll(m2[t], -1, axis=1)).any()
             | (m1[t] & np.roll(m2[t], 1, axis=0)).any()
             | (m1[t] & np.roll(m2[t], -1, axis=0)).any()
             for t in range(len(m1))]
    assert any(touch) and a1['reid']['crossings'] >= 1
    (a, masks, _, frames), = roles['fast']
    ious = [(masks[t] & masks[t + 1]).sum() / (masks[t] | masks[t + 1]).sum()
            for t in frames[:-1] if t + 1 in set(frames)]
    assert np.mean(ious) < 0.2
    late = [x for x in anns if x['reid']['late']]
    assert len(late) == 1 and late[0]['reid']['first_frame'] >= 12
