"""FPN levels, their strides and the FCOS location grid: the one owner.

The FPN makes five levels P3..P7 from a backbone's C3 (stride 8), C4 (16)
and C5 (32): P3..P5 at the backbone's strides, P6 and P7 by two stride-2
convs, so the strides are :data:`STRIDES`. Every part that places a
location in the picture reads it from here: the head (box scale per level),
the training targets and losses, the online candidate selection and the
dynamic mask head's relative coordinates.

A location of a stride-``s`` map sits at the pixel centre ``(j*s + s//2,
i*s + s//2)`` (x, y) of cell (i, j); the levels are concatenated P3..P7, each
row-major, wherever all locations of a frame are flattened.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

STRIDES = (8, 16, 32, 64, 128)  # P3..P7


def grid_locations(h: int, w: int, stride: int) -> np.ndarray:
  """(h*w, 2) (x, y) pixel centres of a stride-``stride`` map, row-major."""
  ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  loc = np.stack([xs.ravel() * stride + stride // 2,
                  ys.ravel() * stride + stride // 2], axis=-1)
  return loc.astype(np.float32)


def level_shapes(image_size, strides: Sequence[int] = STRIDES):
  """(h, w) of each FPN level for a padded ``image_size`` (divisible by 32).

  P3 is H/8; every further level is the ceiling half of the previous one
  (exact for P4, P5; the stride-2 3x3 convs of P6, P7 round up).
  """
  h = -(-int(image_size[0]) // strides[0])
  w = -(-int(image_size[1]) // strides[0])
  shapes = []
  for _ in strides:
    shapes.append((h, w))
    h, w = -(-h // 2), -(-w // 2)
  return tuple(shapes)


def output_level_shapes(outputs) -> tuple:
  """Level shapes read off the model outputs' 'cls' list (F, h, w, P)."""
  return tuple(tuple(int(s) for s in x.shape[-3:-1]) for x in outputs['cls'])


def num_locations(image_size, strides: Sequence[int] = STRIDES) -> int:
  return sum(h * w for h, w in level_shapes(image_size, strides))


@functools.lru_cache(maxsize=32)
def location_table(shapes: tuple, strides: tuple = STRIDES):
  """Static per-location tables over the concatenated levels.

  Returns numpy arrays ``locations`` (L, 2) (x, y) in input pixels,
  ``stride`` (L,) and ``level`` (L,).
  """
  if len(shapes) != len(strides):
    raise ValueError(f'{len(shapes)} level shapes and {len(strides)} strides '
                     'must agree')
  locs, stride, level = [], [], []
  for n, ((h, w), s) in enumerate(zip(shapes, strides)):
    locs.append(grid_locations(h, w, s))
    stride.append(np.full((h * w,), s, np.float32))
    level.append(np.full((h * w,), n, np.int32))
  return np.concatenate(locs), np.concatenate(stride), np.concatenate(level)
