"""Small type checks shared by the readers, the evaluator and the config."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np


def is_int(x) -> bool:
  """A Python int (what JSON gives), not a bool."""
  return isinstance(x, int) and not isinstance(x, bool)


def is_integral(x) -> bool:
  """An integer, Python or numpy, not a bool."""
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_number(x) -> bool:
  """A finite real number (int or float, Python or numpy), not a bool."""
  return (isinstance(x, numbers.Real) and not isinstance(x, bool)
          and math.isfinite(x))


# ----------------------------------------------------------------- masks
# pycocotools trusts a mask's RLE: counts that do not add up to height x
# width make ``mask.iou`` loop forever and ``mask.decode`` return memory it
# never wrote. Every RLE is checked here before pycocotools sees it.

RLE_FIX = ('re-encode the mask with pycocotools.mask.encode (a Fortran-order '
           'uint8 array of the frame\'s size) or write null for an absent '
           'instance')
_MAX_COUNT_CHARS = 7      # 35 bits: more than any uint32 run length needs
_MAX_RUN = 2 ** 32 - 1    # pycocotools stores run lengths as uint32
MAX_POLYGON_FRAME = 1 << 15  # rasterising costs grow with the coordinates


def rle_size_problem(size) -> str | None:
  """None for an RLE "size" of two positive integers, else what is
  wrong."""
  if (not isinstance(size, (list, tuple)) or len(size) != 2
      or not all(is_integral(x) and x > 0 for x in size)):
    return (f'"size" is {size!r}, expected [height, width] as two '
            'positive integers')
  if int(size[0]) * int(size[1]) > _MAX_RUN:
    return f'"size" {list(size)} has more than 2**32 pixels'
  return None


def _counts_bytes(counts) -> bytes | None:
  if isinstance(counts, bytes):
    return counts
  try:
    return counts.encode('ascii')
  except UnicodeEncodeError:
    return None


def compressed_rle_problems(segs: Sequence) -> list[str | None]:
  """For each of ``segs``: None when it is a valid compressed RLE (``{"size":
  [h, w], "counts": str or bytes}`` whose run lengths add up to h * w), else
  what is wrong with it (one phrase, without the fix).

  The run lengths are decoded as pycocotools' ``rleFrString`` does (5 bits a
  character from '0', a continuation bit 0x20, a sign bit 0x10 on the last
  character of a number, run k > 2 stored as the difference to run k - 2),
  for all strings at once with numpy.
  """
  out: list[str | None] = [None] * len(segs)
  todo, blobs, areas = [], [], []
  for i, seg in enumerate(segs):
    if not isinstance(seg, Mapping) or 'counts' not in seg or 'size' not in seg:
      out[i] = 'not an RLE {"size": [height, width], "counts": ...}'
      continue
    problem = rle_size_problem(seg['size'])
    if problem:
      out[i] = problem
      continue
    counts = seg['counts']
    if not isinstance(counts, (str, bytes)):
      out[i] = (f'"counts" is a {type(counts).__name__}, expected the '
                'compressed string')
      continue
    raw = _counts_bytes(counts)
    if raw is None or (raw and not 48 <= raw[-1] <= 111):
      out[i] = '"counts" holds characters outside the RLE alphabet 0..o'
      continue
    if raw and (raw[-1] - 48) & 0x20:
      out[i] = '"counts" ends in the middle of a number (truncated string)'
      continue
    todo.append(i)
    blobs.append(raw)
    areas.append(int(seg['size'][0]) * int(seg['size'][1]))
  if not blobs:
    return out
  totals, reasons = [], []
  start = 0
  while start < len(blobs):  # a few million characters at a time
    stop, size = start, 0
    while stop < len(blobs) and (stop == start or size < _CHUNK_CHARS):
      size += len(blobs[stop])
      stop += 1
    t, r = _run_length_sums(blobs[start:stop])
    totals.append(t)
    reasons.append(r)
    start = stop
  totals = np.concatenate(totals)
  reasons = np.concatenate(reasons)
  for j, i in enumerate(todo):
    if reasons[j]:
      out[i] = _REASONS[int(reasons[j])]
    elif totals[j] != areas[j]:
      out[i] = _sum_problem(segs[i]['size'], int(totals[j]))
  return out


_CHUNK_CHARS = 1 << 22
_REASONS = {
    1: '"counts" holds characters outside the RLE alphabet 0..o',
    2: f'"counts" holds a number longer than {_MAX_COUNT_CHARS} characters',
    3: 'a run length is negative or above 2**32 (corrupt "counts")'}


_CHAR = np.arange(256) - 48
_BAD_CHAR = (_CHAR < 0) | (_CHAR > 63)
_NUMBER_END = (_CHAR & 0x20) == 0
_LOW_BITS = np.where(_BAD_CHAR, 0, _CHAR & 0x1f).astype(np.int64)
_SIGN_BIT = (_CHAR & 0x10) != 0


def _run_length_sums(blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
  """(sum of the run lengths, reason code or 0) of each compressed string;
  every non-empty string ends with the last character of a number."""
  num = len(blobs)
  lengths = np.fromiter((len(b) for b in blobs), np.int64, num)
  char_start = np.r_[0, np.cumsum(lengths)[:-1]]
  chars = np.frombuffer(b''.join(blobs), np.uint8)
  reason = np.zeros(num, np.int8)
  totals = np.zeros(num, np.int64)
  if not len(chars):
    return totals, reason

  def mark(strings, code):  # the first reason found is kept
    strings = np.asarray(strings)
    reason[strings] = np.where(reason[strings] == 0, code, reason[strings])

  bad = np.flatnonzero(_BAD_CHAR[chars])
  mark(np.searchsorted(char_start, bad, 'right') - 1, 1)
  ends = _NUMBER_END[chars]       # the last character of each number
  starts = np.flatnonzero(np.r_[True, ends[:-1]])
  digits = np.diff(np.r_[starts, len(chars)])
  low = _LOW_BITS[chars]
  values = low[starts]
  for d in range(1, min(int(digits.max()), _MAX_COUNT_CHARS)):
    longer = np.flatnonzero(digits > d)
    values[longer] |= low[starts[longer] + d] << (5 * d)
  negative = _SIGN_BIT[chars[starts + digits - 1]]
  values -= np.where(negative, 1 << (5 * np.minimum(digits, _MAX_COUNT_CHARS)),
                     0)
  first = np.searchsorted(starts, char_start)   # each string's first number
  per_string = np.diff(np.r_[first, len(starts)])
  owner = np.repeat(np.arange(num), per_string)
  mark(owner[digits > _MAX_COUNT_CHARS], 2)
  # runs k > 2 are stored as the difference to run k - 2: runs 1, 3, 5, ...
  # and runs 2, 4, 6, ... of a string are running sums
  k = np.arange(len(values)) - np.repeat(first, per_string)
  odd, even = (k & 1) == 1, (k >= 2) & ((k & 1) == 0)
  runs = values.copy()
  for chain in (odd, even):
    csum = np.cumsum(np.where(chain, values, 0))
    before = np.r_[0, csum][first]               # the sum before each string
    runs = np.where(chain, csum - np.repeat(before, per_string), runs)
  mark(owner[(runs < 0) | (runs > _MAX_RUN)], 3)
  has = per_string > 0
  totals[has] = np.add.reduceat(runs, first[has])
  return totals, reason


def _sum_problem(size, total: int) -> str:
  h, w = int(size[0]), int(size[1])
  return (f'the run lengths of "counts" add up to {total} pixels, not '
          f'height x width = {h} x {w} = {h * w}')


def compressed_rle_problem(seg) -> str | None:
  """:func:`compressed_rle_problems` of one mask."""
  return compressed_rle_problems([seg])[0]


def uncompressed_rle_problem(seg) -> str | None:
  """None for a valid uncompressed RLE (``counts`` a list of non-negative
  run lengths that add up to h * w), else what is wrong."""
  if not isinstance(seg, Mapping) or 'counts' not in seg or 'size' not in seg:
    return 'not an RLE {"size": [height, width], "counts": [...]}'
  problem = rle_size_problem(seg['size'])
  if problem:
    return problem
  counts = seg['counts']
  if not isinstance(counts, list) or not all(
      is_integral(c) and 0 <= c <= _MAX_RUN for c in counts):
    return '"counts" must be a list of non-negative integer run lengths'
  h, w = seg['size']
  if sum(counts) != h * w:
    return _sum_problem(seg['size'], sum(counts))
  return None


def polygon_problem(seg, height: int, width: int) -> str | None:
  """None for a polygon list pycocotools can rasterise in a height x width
  frame, else what is wrong: every polygon a flat list of at least three
  (x, y) pairs of finite numbers, none far outside the frame (those make
  pycocotools walk billions of points)."""
  if not isinstance(seg, list) or not seg:
    return 'a polygon mask must be a non-empty list of polygons'
  if max(height, width) > MAX_POLYGON_FRAME:
    return (f'polygons are only decoded in frames up to {MAX_POLYGON_FRAME} '
            f'pixels a side, this one is {height}x{width}; give the mask as '
            'an RLE')
  reach = 2 * max(height, width, 1)
  for p, poly in enumerate(seg):
    if (not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2
        or not all(is_number(v) for v in poly)):
      return (f'polygon {p} must be a flat list [x1, y1, x2, y2, ...] of at '
              'least three points (finite numbers)')
    if any(not -reach <= v <= reach for v in poly):
      return (f'polygon {p} has a coordinate far outside the {height}x'
              f'{width} frame')
  return None
