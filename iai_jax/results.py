"""YouTube-VIS / OVIS results files: RLE masks, per-video entries, submission.

The official results format (``ytvos.py`` ``loadRes``; see
``shared/reference/vis-format-and-metric.md``) is a JSON list with one entry
per predicted track::

  {"video_id": int, "category_id": int, "score": float,
   "segmentations": [per frame: {"size": [h, w], "counts": str} | null]}

``category_id`` is the dataset's own id (1-based in the released JSON files),
the masks are *compressed* RLE (the only kind ``loadRes`` accepts) at the
original frame size, one per frame of the video, ``null`` where the track is
absent.

:func:`video_results` turns a video's tracks (from
:meth:`iai_jax.tracking.VideoAccumulator.finish`) into such entries,
:func:`check_results` verifies a whole results list against the videos and
:func:`write_submission` writes ``results.json`` and the zip that the
benchmark servers take (``results.json`` at the root of the archive).
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
import warnings
import zipfile
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from iai_jax import atomic
from iai_jax.validate import is_int

_MAX_LISTED = 20  # problems spelled out in a check_results error


# ----------------------------------------------------------------- RLE
def encode_mask(mask: np.ndarray) -> dict[str, Any]:
  """(h, w) bool mask -> compressed RLE ``{'size': [h, w], 'counts': str}``."""
  mask = np.asarray(mask)
  if mask.ndim != 2:
    raise ValueError(f'a mask must be 2-D (h, w), got shape {mask.shape}')
  if mask.dtype != bool:
    if not np.issubdtype(mask.dtype, np.integer):
      raise ValueError(f'a mask must be bool (or 0/1 integers), got {mask.dtype}')
    mask = mask != 0
  rle = mask_utils.encode(np.asfortranarray(mask[:, :, None].astype(np.uint8)))[0]
  return {'size': [int(rle['size'][0]), int(rle['size'][1])],
          'counts': rle['counts'].decode('ascii')}


def decode_mask(rle: dict[str, Any]) -> np.ndarray:
  """Compressed RLE (counts as str or bytes) -> (h, w) bool mask."""
  counts = rle['counts']
  if isinstance(counts, str):
    counts = counts.encode('ascii')
  return mask_utils.decode({'size': list(rle['size']), 'counts': counts}
                           ).astype(bool)


# ----------------------------------------------------------------- entries
def video_results(video_id: int, tracks: Sequence[dict],
                  category_ids: Sequence[int]) -> list[dict[str, Any]]:
  """One video's tracks -> entries of the official results list.

  Args:
    video_id: the dataset's video id.
    tracks: dicts with 'label' (0-based class index), 'score' and
      'segmentations' (per frame: compressed RLE with str counts, or None),
      as :meth:`iai_jax.tracking.VideoAccumulator.finish` returns them.
    category_ids: the dataset's category id of each 0-based label (the
      ``categories`` of the annotation file, in label order).
  Returns:
    ``[{'video_id', 'category_id', 'score', 'segmentations'}]`` with plain
    Python types (JSON-serialisable), in the tracks' order.
  """
  out = []
  for t in tracks:
    label = int(t['label'])
    if not 0 <= label < len(category_ids):
      raise ValueError(f'track label {label} is outside the {len(category_ids)} '
                       'categories')
    out.append({'video_id': int(video_id),
                'category_id': int(category_ids[label]),
                'score': float(t['score']),
                'segmentations': [None if s is None else
                                  {'size': [int(s['size'][0]), int(s['size'][1])],
                                   'counts': s['counts']}
                                  for s in t['segmentations']]})
  return out


# ----------------------------------------------------------------- checks
def _video_table(videos) -> dict[int, tuple[int, int, int]]:
  """{id: (length, height, width)} of video dicts (GT or pipeline metadata)."""
  table = {}
  for i, v in enumerate(videos):
    try:
      vid = int(v['id'])
      length = int(v['length']) if 'length' in v else len(v['file_names'])
      table[vid] = (length, int(v['height']), int(v['width']))
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f'videos[{i}] needs id, height, width and length (or '
                       f'file_names): {e!r}') from e
  return table


def check_results(results, videos: Sequence[dict],
                  category_ids: Sequence[int] | None = None) -> None:
  """Checks a results list against the videos it was made for.

  Args:
    results: the results list (see the module docstring).
    videos: dicts with 'id', 'height', 'width' and 'length' (or
      'file_names'), e.g. the ``videos`` of the annotation file.
    category_ids: when given, every ``category_id`` must be one of them.

  Checked: every entry is a dict with ``video_id`` (an int naming one of
  ``videos``), ``category_id`` (an int), ``score`` (a finite number) and
  ``segmentations``: a list with one item per frame of the video (equal
  lengths: the OVIS evaluator asserts it, the YouTube-VIS one silently
  truncates), each ``None`` or a compressed RLE dict whose ``size`` is the
  video's ``[height, width]`` and whose ``counts`` is a str; and that the
  list is JSON-serialisable.

  Videos without any prediction are allowed: the official evaluators (and
  the servers that run them) score every ground-truth video, and one with no
  results simply has all its tracks missed; only result entries naming
  videos that are not in the ground truth are rejected (``loadRes`` asserts
  it). An empty list passes this check, although the official ``loadRes``
  crashes on it (``anns[0]``), so a server would reject such a submission;
  :func:`write_submission` warns about it.

  Raises:
    ValueError: listing the problems found (the first 20, and how many more).
  """
  if not isinstance(results, list):
    raise ValueError(f'results must be a list, got {type(results).__name__}')
  table = _video_table(videos)
  cats = None if category_ids is None else {int(c) for c in category_ids}
  problems = []
  for i, r in enumerate(results):
    label = f'results[{i}]'
    if not isinstance(r, dict):
      problems.append(f'{label} is a {type(r).__name__}, not a dict')
      continue
    missing = [k for k in ('video_id', 'category_id', 'score', 'segmentations')
               if k not in r]
    if missing:
      problems.append(f'{label} lacks {", ".join(missing)}')
      continue
    vid = r['video_id']
    if not is_int(vid):
      problems.append(f'{label}: video_id {vid!r} ({type(vid).__name__}) is not '
                      'an int')
      video = None
    elif vid not in table:
      problems.append(f'{label}: video_id {vid} is not one of the videos')
      video = None
    else:
      video = table[vid]
    cat = r['category_id']
    if not is_int(cat):
      problems.append(f'{label}: category_id {cat!r} ({type(cat).__name__}) is '
                      'not an int')
    elif cats is not None and cat not in cats:
      problems.append(f'{label}: category_id {cat} is not a dataset category')
    score = r['score']
    if (not isinstance(score, (int, float)) or isinstance(score, bool)
        or not math.isfinite(score)):
      problems.append(f'{label}: score {score!r} ({type(score).__name__}) is not '
                      'a finite int or float')
    segs = r['segmentations']
    if not isinstance(segs, list):
      problems.append(f'{label}: segmentations is a {type(segs).__name__}, '
                      'not a list')
      continue
    if video is None:
      continue
    length, h, w = video
    if len(segs) != length:
      problems.append(f'{label}: {len(segs)} segmentations for video {vid} '
                      f'of {length} frames')
    for f, s in enumerate(segs):
      if s is None:
        continue
      where = f'{label} frame {f}'
      if not isinstance(s, dict) or 'size' not in s or 'counts' not in s:
        problems.append(f'{where}: not an RLE dict with size and counts')
        continue
      size = s['size']
      if (not isinstance(size, (list, tuple)) or len(size) != 2
          or not all(isinstance(x, numbers.Integral) for x in size)
          or [int(x) for x in size] != [h, w]):
        problems.append(f'{where}: RLE size {size!r} is not the frame size '
                        f'[{h}, {w}]')
      if not isinstance(s['counts'], str):
        problems.append(f'{where}: RLE counts is a {type(s["counts"]).__name__}, '
                        'not a compressed str')
  if not problems:
    try:
      json.dumps(results)
    except (TypeError, ValueError) as e:
      problems.append(f'results are not JSON-serialisable: {e}')
  if problems:
    listed = problems[:_MAX_LISTED]
    more = len(problems) - len(listed)
    msg = f'{len(problems)} problem(s) in the results:\n  ' + '\n  '.join(listed)
    if more:
      msg += f'\n  ... and {more} more'
    raise ValueError(msg)


def write_submission(results, out_dir: str, videos: Sequence[dict],
                     category_ids: Sequence[int] | None = None
                     ) -> tuple[str, str]:
  """Checks the results, writes ``results.json`` and ``results.zip``.

  The zip holds ``results.json`` at its root, which is what the YouTube-VIS
  and OVIS servers take. Both are written under temporary names and renamed
  into place. Returns (json path, zip path).
  """
  check_results(results, videos, category_ids)
  if not results:
    warnings.warn('the results list is empty: the official evaluator (loadRes) '
                  'crashes on an empty list, so a server will reject it')
  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, 'results.json')
  zip_path = os.path.join(out_dir, 'results.zip')
  text = json.dumps(results)
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, 'w', compression=zipfile.ZIP_DEFLATED) as z:
    z.writestr('results.json', text)
  atomic.write_text(json_path, text)
  atomic.write_bytes(zip_path, buffer.getvalue())
  return json_path, zip_path
