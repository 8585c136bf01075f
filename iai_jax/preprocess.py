"""Frame preprocessing, as the authors' mmdet pipeline does it.

One owner for training (:mod:`iai_jax.data.pipeline`) and the online loop
(:mod:`iai_jax.inference`):

* :func:`rescale_size`: keep the ratio, fit (long, short) =
  (``input.size[1]``, ``input.size[0]``): scale = min(long / longer side,
  short / shorter side), new size ``int(side * scale + 0.5)`` (mmcv's
  ``rescale_size``; small frames are enlarged);
* :func:`resize_image` / :func:`resize_mask`: OpenCV's bilinear (uint8,
  no antialiasing, what ``mmcv.imresize`` calls) for frames, nearest for
  masks;
* :func:`padded_size`: the resized frame padded at the bottom/right to a
  multiple of ``input.size_divisor`` (32), per frame size - a 4:3 video
  is 384x480, a 16:9 one 384x640;
* :func:`normalize`: on the device, ``(x - mean) * (1 / std)`` in float32
  (mmcv's ``imnormalize``, bit for bit), THEN the padding set to 0 - so the
  padded area is the mean colour, not -mean/std.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def rescale_size(height: int, width: int, short: int, long: int
                 ) -> tuple[int, int]:
  """(new h, new w) of a (height, width) frame fitted to (short, long)."""
  scale = min(long / max(height, width), short / min(height, width))
  return int(height * scale + 0.5), int(width * scale + 0.5)


def padded_size(height: int, width: int, divisor: int = 32) -> tuple[int, int]:
  """Size after padding to a multiple of ``divisor`` (360x640 -> 384x640)."""
  return (int(math.ceil(height / divisor) * divisor),
          int(math.ceil(width / divisor) * divisor))


def resize_image(image: np.ndarray, size) -> np.ndarray:
  """(h, w, 3) uint8 -> ``size`` (h', w') with OpenCV's bilinear."""
  import cv2
  if tuple(image.shape[:2]) == tuple(size):
    return image
  return cv2.resize(np.ascontiguousarray(image), (int(size[1]), int(size[0])),
                    interpolation=cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size) -> np.ndarray:
  """(h, w) uint8 / bool mask -> ``size`` with OpenCV's nearest."""
  import cv2
  if tuple(mask.shape[:2]) == tuple(size):
    return mask
  out = cv2.resize(np.ascontiguousarray(mask.astype(np.uint8)),
                   (int(size[1]), int(size[0])),
                   interpolation=cv2.INTER_NEAREST)
  return out.astype(mask.dtype)


def pad_image(image: np.ndarray, size) -> np.ndarray:
  """Zero-pad (h, w, ...) at the bottom and right to ``size``."""
  out = np.zeros((*size, *image.shape[2:]), image.dtype)
  out[:image.shape[0], :image.shape[1]] = image
  return out


def normalize(images, image_size, input_cfg):
  """uint8 RGB (..., H, W, 3) -> float32 ``(x - mean) * (1 / std)``, zero
  outside the resized frame.

  ``image_size``: (..., 2) int, each frame's resized (h, w) (the rest of the
  H x W array is padding). The reciprocal of std is taken in float64 and
  rounded to float32, as mmcv does.
  """
  mean = jnp.asarray(np.asarray(input_cfg.mean, np.float32))
  inv_std = jnp.asarray((1.0 / np.asarray(input_cfg.std, np.float64)
                         ).astype(np.float32))
  x = (jnp.asarray(images).astype(jnp.float32) - mean) * inv_std
  h, w = x.shape[-3], x.shape[-2]
  size = jnp.asarray(image_size, jnp.int32)
  rows = jnp.arange(h) < size[..., 0, None]  # (..., H)
  cols = jnp.arange(w) < size[..., 1, None]  # (..., W)
  inside = rows[..., :, None] & cols[..., None, :]
  return jnp.where(inside[..., None], x, 0.0)
