"""Ground-truth and results files of the metrics: reading and validation.

What :mod:`iai_jax.evaluate` (AP/AR) and :mod:`iai_jax.track_metrics` (HOTA,
IDF1, CLEAR) share: the YouTube-VIS / OVIS ground truth and results parsed
into per-(video, category) tracks of compressed RLEs, with an
:class:`EvaluationError` that names the file's entry at fault.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from collections.abc import Hashable, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from iai_jax import validate
from iai_jax.validate import is_integral, is_number

OCC_SCORES = {'no_occlusion': 0.0, 'slight_occlusion': 0.25,
              'severe_occlusion': 0.75}


class EvaluationError(ValueError):
  """Bad evaluation input.

  ``source`` says which input is at fault: ``'gt'``, ``'results'`` or ``None``.
  """

  def __init__(self, message: str, source: str | None = None):
    super().__init__(message)
    self.source = source


# ---------------------------------------------------------------- tracks


@dataclasses.dataclass
class _Track:
  """One GT annotation or one result, prepared for matching."""
  ann_id: int            # GT: annotation id; results: list index + 1
  label: str             # for error messages
  seq: list              # per frame: RLE dict or None
  avg_area: float
  crowd: bool = False     # ignore region (truthy iscrowd)
  reusable: bool = False  # may absorb several detections (int(iscrowd) != 0)
  score: float = 0.0
  occ_score: float = 0.0
  areas: np.ndarray | None = None  # per frame RLE area, -1 where absent
  sizes: list | None = None        # per frame (h, w) or None


def _avg_area(values) -> float:
  """Mean of the truthy entries (None and 0 skipped); 0 if there are none."""
  kept = [a for a in values if a]
  if not kept:
    return 0
  return np.array(kept).mean()


def _occlusion_score(levels, label: str) -> float:
  """Mean of the top ceil(n/2) per-frame occlusion scores (nulls skipped)."""
  scores = []
  for f, level in enumerate(levels):
    if level is None:
      continue
    if level not in OCC_SCORES:
      raise EvaluationError(
          f'{label}: occlusion[{f}] is {level!r}, expected one of '
          f'{sorted(OCC_SCORES)} or null', 'gt')
    scores.append(OCC_SCORES[level])
  if not scores:
    raise EvaluationError(f'{label}: occlusion has no non-null frame', 'gt')
  scores.sort()
  top = scores[-math.ceil(len(scores) / 2):]
  return sum(top) / len(top)


def _is_compressed_rle(seg) -> bool:
  return (isinstance(seg, dict) and isinstance(seg.get('counts'), (str, bytes))
          and isinstance(seg.get('size'), Sequence) and len(seg['size']) == 2)


def _gt_frame_to_rle(seg, video: dict, label: str, frame: int) -> dict:
  """Polygon list, uncompressed RLE or compressed RLE -> compressed RLE.

  A compressed RLE is returned as it is and checked later, with all the
  others (:func:`_check_compressed`)."""
  if _is_compressed_rle(seg):
    return seg
  polygon = isinstance(seg, list)
  uncompressed = (isinstance(seg, dict) and isinstance(seg.get('counts'), list)
                  and 'size' in seg)
  if not (polygon or uncompressed):
    raise EvaluationError(
        f'{label}: segmentations[{frame}] is neither a polygon list, an RLE '
        'nor null', 'gt')
  h, w = video.get('height'), video.get('width')
  if not (is_integral(h) and is_integral(w) and h > 0 and w > 0):
    raise EvaluationError(
        f'video {video["id"]} needs positive integer "height" and "width" to '
        f'decode {label} segmentations[{frame}]', 'gt')
  problem = (validate.polygon_problem(seg, h, w) if polygon
             else validate.uncompressed_rle_problem(seg))
  if problem:
    raise EvaluationError(f'{label}: segmentations[{frame}]: {problem}; '
                          f'{validate.RLE_FIX}', 'gt')
  try:
    if polygon:
      return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    return mask_utils.frPyObjects(seg, h, w)
  except Exception as e:  # pycocotools raises bare Exception / TypeError
    raise EvaluationError(
        f'{label}: cannot decode segmentations[{frame}]: {e}', 'gt') from e


def _check_compressed(tracks, source: str) -> None:
  """Every compressed RLE of ``tracks`` checked at once (run lengths that
  add up to height x width), before pycocotools sees any: it loops forever
  on some broken ones."""
  where, segs = [], []
  for track in tracks:
    for f, seg in enumerate(track.seq):
      if seg is not None:
        where.append((track.label, f))
        segs.append(seg)
  for (label, f), problem in zip(where,
                                 validate.compressed_rle_problems(segs)):
    if problem:
      raise EvaluationError(f'{label}: segmentations[{f}]: {problem}; '
                            f'{validate.RLE_FIX}', source)


def _finish_track(track: _Track) -> _Track:
  """Pre-computes the per-frame RLE areas and mask sizes of a track."""
  present = [f for f, s in enumerate(track.seq) if s is not None]
  areas = np.full(len(track.seq), -1, np.int64)
  sizes = [None] * len(track.seq)
  if present:
    areas[present] = mask_utils.area([track.seq[f] for f in present])
    for f in present:
      sizes[f] = (int(track.seq[f]['size'][0]), int(track.seq[f]['size'][1]))
  track.areas = areas
  track.sizes = sizes
  return track


# ---------------------------------------------------------------- input


def declared_frames(video: dict) -> int | None:
  """A GT video's frame count: ``len(file_names)``, else ``length``; None
  when it states neither."""
  names = video.get('file_names')
  if isinstance(names, list) and names:
    return len(names)
  length = video.get('length')
  if is_integral(length) and length >= 0:
    return int(length)
  return 0 if isinstance(names, list) else None


def _require(obj: dict, keys, label: str, source: str):
  for key in keys:
    if key not in obj:
      raise EvaluationError(f'{label} has no "{key}" key', source)


def _parse_gt(gt, ovis: bool):
  """-> (video ids sorted, {video id: video}, category ids sorted, names,
  {(video, category): [GT tracks in file order]})."""
  if not isinstance(gt, dict):
    raise EvaluationError(
        f'ground truth must be a JSON object, got {type(gt).__name__}', 'gt')
  for key in ('videos', 'categories'):
    if not isinstance(gt.get(key), list):
      raise EvaluationError(f'ground truth has no "{key}" list', 'gt')
  annotations = gt.get('annotations')
  if annotations is None:
    annotations = []
  if not isinstance(annotations, list):
    raise EvaluationError('ground truth "annotations" is not a list', 'gt')

  videos = {}
  for i, video in enumerate(gt['videos']):
    if not isinstance(video, dict) or not is_integral(video.get('id')):
      raise EvaluationError(f'videos[{i}] has no integer "id"', 'gt')
    videos[video['id']] = video
  names = {}
  for i, cat in enumerate(gt['categories']):
    if not isinstance(cat, dict) or not is_integral(cat.get('id')):
      raise EvaluationError(f'categories[{i}] has no integer "id"', 'gt')
    names[cat['id']] = str(cat.get('name', cat['id']))
  video_ids = sorted(videos)
  cat_ids = sorted(names)

  # Annotations of videos / categories that are not evaluated only need the
  # keys the benchmark indexes every annotation by.
  index_keys = ('id', 'video_id', 'category_id')
  keys = ['iscrowd', 'segmentations', 'areas']
  if ovis:
    keys.append('occlusion')
  tracks = {}
  seen_ids = set()
  for i, ann in enumerate(annotations):
    label = f'annotations[{i}]'
    if not isinstance(ann, dict):
      raise EvaluationError(f'{label} is not an object', 'gt')
    _require(ann, index_keys, label, 'gt')
    if not is_integral(ann['id']):
      raise EvaluationError(f'{label} "id" is not an integer', 'gt')
    label = f'annotations[{i}] (id {ann["id"]})'
    if ann['id'] in seen_ids:
      raise EvaluationError(f'{label}: duplicate annotation id', 'gt')
    seen_ids.add(ann['id'])
    if not isinstance(ann['video_id'], Hashable) or not isinstance(
        ann['category_id'], Hashable):
      raise EvaluationError(f'{label}: bad video_id / category_id', 'gt')
    if ann['video_id'] not in videos or ann['category_id'] not in names:
      continue  # not evaluated, like the benchmark
    _require(ann, keys, label, 'gt')
    if not (isinstance(ann['iscrowd'], numbers.Real)
            and math.isfinite(ann['iscrowd'])):
      raise EvaluationError(f'{label}: iscrowd is not a number', 'gt')
    for key in ('segmentations', 'areas') + (('occlusion',) if ovis else ()):
      if not isinstance(ann[key], list):
        raise EvaluationError(f'{label} "{key}" is not a list', 'gt')
    for f, a in enumerate(ann['areas']):
      if a is not None and not is_number(a):
        raise EvaluationError(f'{label}: areas[{f}] is not a number', 'gt')
    video = videos[ann['video_id']]
    frames = declared_frames(video)
    last = max((f for f, s in enumerate(ann['segmentations']) if s),
               default=-1)
    if frames is not None and last >= frames:
      raise EvaluationError(
          f'{label}: has a mask in frame {last} but video {video["id"]} has '
          f'{frames} frames (its "file_names" / "length"); fix the video\'s '
          'frame list or the annotation', 'gt')
    seq = [_gt_frame_to_rle(s, video, label, f) if s else None
           for f, s in enumerate(ann['segmentations'])]
    track = _Track(ann_id=ann['id'], label=label, seq=seq,
                   avg_area=_avg_area(ann['areas']),
                   crowd=bool(ann['iscrowd']),
                   reusable=int(ann['iscrowd']) != 0)
    if ovis:
      track.occ_score = _occlusion_score(ann['occlusion'], label)
    key = (ann['video_id'], ann['category_id'])
    tracks.setdefault(key, []).append(track)
  every = [t for group in tracks.values() for t in group]
  _check_compressed(every, 'gt')
  for track in every:
    _finish_track(track)
  return video_ids, videos, cat_ids, names, tracks


def _parse_results(results, videos: dict, names: dict):
  """-> {(video, category): [result tracks in file order]}."""
  if not isinstance(results, list):
    raise EvaluationError(
        f'results must be a JSON list, got {type(results).__name__}',
        'results')
  tracks, checked = {}, []
  for i, res in enumerate(results):
    label = f'results[{i}]'
    if not isinstance(res, dict):
      raise EvaluationError(f'{label} is not an object', 'results')
    _require(res, ('video_id', 'category_id', 'score', 'segmentations'),
             label, 'results')
    vid, cat = res['video_id'], res['category_id']
    if not isinstance(vid, Hashable) or vid not in videos:
      raise EvaluationError(
          f'{label}: video_id {vid!r} is not a video of the ground truth',
          'results')
    if not is_number(res['score']):
      raise EvaluationError(
          f'{label}: score is {res["score"]!r}, not a finite number; write '
          'each result\'s confidence as a number (NaN and infinity are not '
          'scores)', 'results')
    if not isinstance(res['segmentations'], list):
      raise EvaluationError(f'{label}: "segmentations" is not a list',
                            'results')
    seq = []
    for f, s in enumerate(res['segmentations']):
      if not s:
        seq.append(None)
      elif _is_compressed_rle(s):
        seq.append(s)
      else:
        raise EvaluationError(
            f'{label}: segmentations[{f}] is not a compressed RLE '
            '({"size": [h, w], "counts": str}) or null', 'results')
    track = _Track(ann_id=i + 1, label=label, seq=seq, avg_area=0,
                   score=res['score'])
    checked.append(track)
    if not isinstance(cat, Hashable) or cat not in names:
      continue  # categories outside the GT are dropped silently
    tracks.setdefault((vid, cat), []).append(track)
  _check_compressed(checked, 'results')
  for group in tracks.values():
    for track in group:
      _finish_track(track)
      track.avg_area = _avg_area([int(a) if a >= 0 else None
                                  for a in track.areas])
  return tracks


def load_json(path: str, source: str | None = None):
  """json.load with one-line errors naming the file."""
  if not os.path.exists(path):
    raise EvaluationError(f'{path}: no such file', source)
  if os.path.isdir(path):
    raise EvaluationError(f'{path}: is a directory, not a JSON file', source)
  try:
    with open(path, encoding='utf-8') as fh:
      return json.load(fh)
  except json.JSONDecodeError as e:
    raise EvaluationError(
        f'{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})',
        source) from e
  except (OSError, UnicodeDecodeError) as e:
    raise EvaluationError(f'{path}: cannot read ({e})', source) from e
