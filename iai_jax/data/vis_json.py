"""Readers for YouTube-VIS 2019/2021/2022 and OVIS annotation files.

The format (one JSON per split): ``videos`` (``id``, ``height``, ``width``,
``length``, ``file_names``), ``annotations`` (``id``, ``video_id``,
``category_id``, ``iscrowd``, and per-frame lists ``segmentations``,
``bboxes``, ``areas`` with ``null`` where the instance is absent; OVIS adds
``occlusion``) and ``categories`` (``id``, ``name``). A mask is a polygon
list, an uncompressed RLE (``counts`` a list) or a compressed RLE
(``counts`` a string); all are converted to compressed RLE with pycocotools.

Classes are the JSON's categories in ascending id order, numbered 0..P-1
(:attr:`VisDataset.categories` keeps the original ids and names, so results
are written back with them). Crowd instances stay in the data with
``iscrowd=True``: the pipeline turns them into ignore regions, never targets.

Held-out split (:func:`heldout_split`): the training videos' ids, sorted,
shuffled by ``numpy.random.default_rng(seed)``; the first
``round(fraction * n)`` (at least one when the fraction is positive and there
are two or more videos, and never all of them) are held out; both id lists
are returned sorted. The same config always gives the same split.
:func:`write_heldout_gt` writes the held-out videos' original annotations as
a ground-truth file for :mod:`iai_jax.evaluate`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from iai_jax import validate
from iai_jax.validate import is_int


class VisDataError(ValueError):
  """A dataset that cannot be read as it is; the message says how to fix it."""


@dataclasses.dataclass
class Track:
  track_id: int
  label: int                 # 0-based class
  iscrowd: bool
  segmentations: list        # per frame: compressed RLE dict or None
  occlusion: list | None = None


@dataclasses.dataclass
class Video:
  video_id: int
  height: int
  width: int
  file_names: list[str]
  tracks: list[Track]


@dataclasses.dataclass
class VisDataset:
  videos: list[Video]
  categories: list[tuple[int, str]]   # (original id, name), label order
  frames_root: str
  path: str = ''

  @property
  def category_ids(self) -> list[int]:
    return [c for c, _ in self.categories]

  @property
  def class_names(self) -> list[str]:
    return [n for _, n in self.categories]


def read_json(path: str, what: str = 'annotation file') -> Any:
  if not os.path.exists(path):
    raise VisDataError(
        f'{what} {os.path.abspath(path)} does not exist. Point the config at '
        'your dataset with --config.dataset.root=... (and dataset.train_json '
        '/ dataset.val_json if the file is named differently); see '
        'data/README.md for the expected layout.')
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise VisDataError(f'{path} is not valid JSON: {e.msg} at line {e.lineno} '
                       f'column {e.colno}. Is the file complete (download '
                       'or copy interrupted)?') from e
  except (OSError, UnicodeDecodeError) as e:
    raise VisDataError(f'cannot read {path}: {e}') from e


def to_rle(seg, height: int, width: int, where: str,
           checked: bool = False) -> dict:
  """Polygon / uncompressed RLE / compressed RLE -> compressed RLE (bytes).

  Every mask is checked before pycocotools sees it (:mod:`iai_jax.validate`):
  it trusts RLEs, and one whose run lengths do not add up to height x width
  decodes to memory it never wrote. ``checked``: a compressed RLE was
  already checked (:func:`annotation_masks` checks them all at once).
  """
  try:
    if isinstance(seg, list):  # polygons
      if not seg:
        raise VisDataError(f'{where}: empty polygon list (use null for absent)')
      problem = validate.polygon_problem(seg, height, width)
      if problem:
        raise VisDataError(f'{where}: {problem}; {validate.RLE_FIX}')
      rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg, dict) and 'counts' in seg and 'size' in seg:
      problem = validate.rle_size_problem(seg['size'])
      if problem:
        raise VisDataError(f'{where}: {problem}')
      if list(seg['size']) != [height, width]:
        raise VisDataError(
            f'{where}: mask size {list(seg["size"])} does not match the video '
            f'size [{height}, {width}] (height, width)')
      if isinstance(seg['counts'], list):
        problem = validate.uncompressed_rle_problem(seg)
        if problem:
          raise VisDataError(f'{where}: {problem}; {validate.RLE_FIX}')
        rle = mask_utils.frPyObjects(seg, height, width)
      else:
        problem = None if checked else validate.compressed_rle_problem(seg)
        if problem:
          raise VisDataError(f'{where}: {problem}; {validate.RLE_FIX}')
        counts = seg['counts']
        rle = {'size': [height, width],
               'counts': counts.encode() if isinstance(counts, str) else counts}
    else:
      raise VisDataError(f'{where}: a mask must be a polygon list, an RLE dict '
                         '{"size", "counts"} or null')
  except VisDataError:
    raise
  except Exception as e:  # pycocotools raises bare Exceptions
    raise VisDataError(f'{where}: cannot decode the mask: {e}') from e
  return {'size': [height, width], 'counts': rle['counts']}


def annotation_masks(segs: list, height: int, width: int, where: str
                     ) -> list[dict | None]:
  """One annotation's per-frame masks as compressed RLE, None where absent.

  Raises VisDataError naming ``where`` and the frame of the first bad mask;
  the compressed RLEs are checked all at once.
  """
  compressed = [f for f, s in enumerate(segs)
                if isinstance(s, dict) and isinstance(s.get('counts'),
                                                      (str, bytes))
                and isinstance(s.get('size'), (list, tuple))
                and list(s['size']) == [height, width]]
  problems = dict(zip(compressed, validate.compressed_rle_problems(
      [segs[f] for f in compressed])))
  out = []
  for f, seg in enumerate(segs):
    if problems.get(f):
      raise VisDataError(f'{where} frame {f}: {problems[f]}; '
                         f'{validate.RLE_FIX}')
    out.append(None if seg is None else to_rle(
        seg, height, width, f'{where} frame {f}', checked=f in problems))
  return out


OCCLUSION_LEVELS = ('no_occlusion', 'slight_occlusion', 'severe_occlusion')


def parse(data: dict, path: str = '<json>') -> tuple[list, dict, list]:
  """Structural checks; returns (videos, {video id: [annotations]}, categories).

  Raises VisDataError on the first structural problem (missing keys, wrong
  types, list lengths that differ from the frame count, unknown categories).
  """
  fmt = ('see data/README.md for the YouTube-VIS / OVIS format, or run '
         'python -m iai_jax.data.check to list every problem')
  if not isinstance(data, dict):
    raise VisDataError(f'{path}: expected a JSON object with "videos", '
                       f'"annotations" and "categories"; {fmt}')
  for key in ('videos', 'categories'):
    if not isinstance(data.get(key), list):
      raise VisDataError(f'{path}: no "{key}" list; is this a YouTube-VIS / '
                         f'OVIS annotation file? ({fmt})')
  if not isinstance(data.get('annotations', []), (list, type(None))):
    raise VisDataError(f'{path}: "annotations" is not a list')
  cats = []
  for i, c in enumerate(data['categories']):
    if not isinstance(c, dict) or not is_int(c.get('id')):
      raise VisDataError(f'{path}: categories[{i}] has no integer "id"; '
                         'each category needs {"id": int, "name": str}')
    cats.append((c['id'], str(c.get('name', c['id']))))
  cats.sort()
  cat_ids = [c for c, _ in cats]
  if len(set(cat_ids)) != len(cat_ids):
    raise VisDataError(f'{path}: duplicate category ids in "categories"')
  cat_ids = set(cat_ids)
  videos, by_id = [], {}
  for i, v in enumerate(data['videos']):
    if not isinstance(v, dict):
      raise VisDataError(f'{path}: videos[{i}] is not an object; {fmt}')
    for key in ('id', 'height', 'width', 'file_names'):
      if key not in v:
        raise VisDataError(f'{path}: videos[{i}] has no "{key}" (every video '
                           'needs id, height, width and file_names)')
    if not all(is_int(v[k]) for k in ('id', 'height', 'width')) or min(
        v['height'], v['width']) < 1:
      raise VisDataError(f'{path}: videos[{i}]: id, height and width must be '
                         'integers (height, width > 0)')
    if not isinstance(v['file_names'], list) or not v['file_names']:
      raise VisDataError(f'{path}: video {v["id"]} has no frame file names '
                         '("file_names" must be a non-empty list of paths '
                         'relative to the frames folder)')
    if v['id'] in by_id:
      raise VisDataError(f'{path}: video id {v["id"]} appears twice in '
                         '"videos"')
    videos.append(v)
    by_id[v['id']] = v
  anns: dict[int, list] = {v['id']: [] for v in videos}
  for i, a in enumerate(data.get('annotations') or []):
    where = f'{path}: annotations[{i}]'
    if not isinstance(a, dict):
      raise VisDataError(f'{where} is not an object')
    if 'id' in a:
      where += f' (id {a["id"]})'
    for key in ('video_id', 'category_id', 'segmentations'):
      if key not in a:
        raise VisDataError(f'{where} has no "{key}" (every annotation needs '
                           'video_id, category_id and per-frame '
                           'segmentations)')
    if 'id' in a and not is_int(a['id']):
      raise VisDataError(f'{where}: "id" must be an integer (or left out)')
    if not is_int(a['video_id']) or a['video_id'] not in by_id:
      raise VisDataError(f'{where}: video_id {a["video_id"]!r} is not in '
                         '"videos"')
    if not is_int(a['category_id']) or a['category_id'] not in cat_ids:
      raise VisDataError(
          f'{where}: category_id {a["category_id"]!r} is not in "categories" '
          f'(known ids: {sorted(cat_ids)}); add the category or fix the id')
    n = len(by_id[a['video_id']]['file_names'])
    for key in ('segmentations', 'bboxes', 'areas', 'occlusion'):
      if key not in a or (a[key] is None and key != 'segmentations'):
        continue
      if not isinstance(a[key], list):
        raise VisDataError(f'{where}: "{key}" must be a list with one entry '
                           'per frame (null where the instance is absent)')
      if len(a[key]) != n:
        raise VisDataError(
            f'{where}: "{key}" has {len(a[key])} entries but video '
            f'{a["video_id"]} has {n} frames (one entry per frame, null '
            'where the instance is absent)')
    bad = [o for o in a.get('occlusion') or []
           if o is not None and o not in OCCLUSION_LEVELS]
    if bad:
      raise VisDataError(f'{where}: occlusion value {bad[0]!r} is not one of '
                         f'{", ".join(OCCLUSION_LEVELS)} or null')
    anns[a['video_id']].append(a)
  return videos, anns, cats


def load_vis_json(ann_path: str, frames_root: str, *,
                  check_files: bool = True) -> VisDataset:
  """Reads an annotation file; masks become compressed RLE.

  With ``check_files`` every frame file must exist under ``frames_root``.
  """
  data = read_json(ann_path)
  if check_files and not os.path.isdir(frames_root):
    raise VisDataError(
        f'frame folder {os.path.abspath(frames_root)} does not exist. Point '
        'the config at it with --config.dataset.root=... / '
        'dataset.train_frames=...; see data/README.md.')
  raw_videos, anns, cats = parse(data, ann_path)
  label_of = {c: k for k, (c, _) in enumerate(cats)}
  videos, missing = [], []
  for v in raw_videos:
    if check_files:
      for name in v['file_names']:
        if not os.path.exists(os.path.join(frames_root, name)):
          missing.append(os.path.join(frames_root, name))
    h, w = int(v['height']), int(v['width'])
    tracks = []
    for a in anns[v['id']]:
      segs = annotation_masks(a['segmentations'], h, w,
                              f'{ann_path}: annotation {a.get("id")}')
      tracks.append(Track(track_id=int(a.get('id', len(tracks) + 1)),
                          label=label_of[a['category_id']],
                          iscrowd=bool(a.get('iscrowd', 0)),
                          segmentations=segs, occlusion=a.get('occlusion')))
    videos.append(Video(int(v['id']), h, w, list(v['file_names']), tracks))
  if missing:
    raise VisDataError(
        f'{len(missing)} frame files listed in {ann_path} are missing, e.g. '
        + ', '.join(missing[:3]) + '. Is dataset.train_frames / '
        'dataset.val_frames (relative to --config.dataset.root=...) the '
        'folder the file names are relative to? python -m '
        'iai_jax.data.check lists them for every video.')
  return VisDataset(videos=videos, categories=cats, frames_root=frames_root,
                    path=ann_path)


# The reader interface of iai_jax.data.paths (``dataset.format='vis_json'``).
load_dataset = load_vis_json


def load_categories(ann_path: str) -> list[tuple[int, str]]:
  """(category id, name) in label order (ascending id)."""
  return list(parse(read_json(ann_path), ann_path)[2])


def heldout_split(dataset: VisDataset, fraction: float,
                  seed: int) -> tuple[list[int], list[int]]:
  """(training video ids, held-out video ids), both sorted; see module doc."""
  ids = sorted(v.video_id for v in dataset.videos)
  if not 0 <= fraction < 1:
    raise ValueError(f'dataset.heldout_fraction must be in [0, 1), got {fraction}')
  n = len(ids)
  k = int(round(fraction * n))
  if fraction > 0 and n > 1:
    k = min(max(k, 1), n - 1)
  order = np.random.default_rng(seed).permutation(n)
  held = sorted(ids[i] for i in order[:k])
  held_set = set(held)
  return [i for i in ids if i not in held_set], held


def heldout_ground_truth(data: dict | str, video_ids) -> dict:
  """The annotation JSON (a dict, or its path) restricted to ``video_ids``.

  Videos and annotations are kept as they are in the file (original ids,
  mask formats, ``areas``, OVIS ``occlusion``), with every category, so that
  :mod:`iai_jax.evaluate` scores them like the benchmark server would.
  """
  if isinstance(data, (str, os.PathLike)):
    data = read_json(os.fspath(data))
  parse(data)  # the same structural checks as the reader
  keep = {int(i) for i in video_ids}
  unknown = keep - {v['id'] for v in data['videos']}
  if unknown:
    raise VisDataError(f'video ids {sorted(unknown)} are not in the '
                       'annotation file')
  return {'info': data.get('info', {}), 'licenses': data.get('licenses', []),
          'categories': data['categories'],
          'videos': [v for v in data['videos'] if v['id'] in keep],
          'annotations': [a for a in data.get('annotations') or []
                          if a['video_id'] in keep]}


def write_heldout_gt(data: dict | str, video_ids, out_path: str) -> str:
  """Writes :func:`heldout_ground_truth` to ``out_path``; returns the path.

  E.g. ``write_heldout_gt(train_json, heldout_split(ds, 0.1, 0)[1],
  'heldout_gt.json')``, then ``python -m iai_jax.evaluate
  --gt=heldout_gt.json --results=results.json``.
  """
  from iai_jax import atomic
  gt = heldout_ground_truth(data, video_ids)
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  atomic.write_json(out_path, gt)
  return out_path
