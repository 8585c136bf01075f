"""Drawing a frame's instances so a person can read them.

:func:`draw_overlay` returns the frame with each instance's mask blended in
its ID's colour, optionally its box, and a label "class #ID score" on a
filled box of the same colour. Small frames are upscaled first (the short
side to at least ``min_side``, 384 px by default: a 160x96 synthetic frame
becomes 640x384), so the label text is drawn at a size that can be read
rather than drawn small and magnified. Every label is placed entirely
inside the frame. The colour of an ID depends on the ID alone
(:func:`id_colour`), so a track keeps its colour over a whole video.
"""

from __future__ import annotations

import colorsys
from typing import Sequence

import numpy as np

MIN_SIDE = 384  # short side of the drawn overlay, in pixels


def id_colour(track_id: int) -> tuple[int, int, int]:
  """A stable, well-spread colour for an ID (golden-angle hue steps)."""
  h = (track_id * 0.618033988749895) % 1.0
  r, g, b = colorsys.hsv_to_rgb(h, 0.75, 1.0)
  return int(r * 255), int(g * 255), int(b * 255)


def text_colour(background: Sequence[int]) -> tuple[int, int, int]:
  """Black on light backgrounds, white on dark ones (perceived luminance)."""
  r, g, b = background[:3]
  return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def output_size(height: int, width: int, min_side: int = MIN_SIDE
                ) -> tuple[int, int]:
  """(height, width) of the overlay: the frame's, or upscaled with its
  aspect ratio kept so that the short side is ``min_side``."""
  short = min(height, width)
  if min_side <= 0 or short >= min_side:
    return height, width
  if height <= width:
    return min_side, max(min_side, round(width * min_side / height))
  return max(min_side, round(height * min_side / width)), min_side


def _pil_resample(name: str):
  from PIL import Image
  methods = {'nearest': Image.Resampling.NEAREST,
             'bilinear': Image.Resampling.BILINEAR}
  if name not in methods:
    raise ValueError(f'resample={name!r}: choose nearest or bilinear')
  return methods[name]


def resize_frame(frame: np.ndarray, size: tuple[int, int],
                 resample: str = 'bilinear') -> np.ndarray:
  """``frame`` (H, W, 3) uint8 resized to ``size`` = (height, width)."""
  from PIL import Image
  if frame.shape[:2] == tuple(size):
    return frame
  img = Image.fromarray(frame).resize((size[1], size[0]), _pil_resample(resample))
  return np.asarray(img)


def resize_mask(mask: np.ndarray, size: tuple[int, int],
                resample: str = 'bilinear') -> np.ndarray:
  """A boolean mask resized to ``size`` like the frame: interpolated with
  the same method, then thresholded at one half."""
  from PIL import Image
  mask = np.asarray(mask, bool)
  if mask.shape == tuple(size):
    return mask
  img = Image.fromarray(mask.astype(np.float32))
  out = img.resize((size[1], size[0]), _pil_resample(resample))
  return np.asarray(out) > 0.5


def default_font_size(height: int, width: int) -> int:
  """Label text size (pixels) for an overlay of this size."""
  return max(12, round(min(height, width) / 22))


def _truetype_font(size: int):
  """PIL's built-in scalable font at ``size`` px, or None without FreeType."""
  from PIL import ImageFont
  try:
    font = ImageFont.load_default(size=size)
  except (TypeError, ImportError, OSError):
    return None
  return font if isinstance(font, ImageFont.FreeTypeFont) else None


def label_tile(text: str, colour: Sequence[int], font_size: int) -> np.ndarray:
  """The label as an image: ``text`` on a filled box of ``colour``.

  With FreeType the text is rendered at ``font_size``; without it PIL's
  bitmap font is rendered and enlarged by a whole factor to about that size.
  """
  from PIL import Image, ImageDraw, ImageFont
  colour, ink = tuple(int(c) for c in colour[:3]), text_colour(colour)
  font = _truetype_font(font_size)
  if font is not None:
    ascent, descent = font.getmetrics()
    left, _, right, _ = font.getbbox(text)
    pad = max(2, font_size // 5)
    w, h = right - min(left, 0) + 2 * pad, ascent + descent + 2 * pad
    img = Image.new('RGB', (w, h), colour)
    ImageDraw.Draw(img).text((pad - min(left, 0), pad), text, fill=ink,
                             font=font, anchor='la')
    return np.asarray(img)
  font = ImageFont.load_default_imagefont()
  _, top, right, bottom = font.getbbox(text)
  img = Image.new('RGB', (right + 4, bottom - min(top, 0) + 4), colour)
  ImageDraw.Draw(img).text((2, 2 - min(top, 0)), text, fill=ink, font=font)
  k = max(1, round(font_size / 11))
  return np.asarray(img.resize((img.width * k, img.height * k),
                               _pil_resample('nearest')))


def _overlaps(a, b) -> bool:
  return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_label(box, size: tuple[int, int], tile_hw: tuple[int, int],
                taken=()) -> tuple[int, int]:
  """Top-left (x, y) of a label of ``tile_hw`` for an object at ``box``
  (x1, y1, x2, y2, overlay pixels) in an overlay of ``size`` (H, W).

  Tried in order: above the box, inside its top edge, below it; x is moved
  left or right as needed so the whole label is inside the frame. The first
  place that does not cover a label in ``taken`` (rectangles x1, y1, x2, y2)
  wins; if all do, the first that fits.
  """
  height, width = size
  th, tw = tile_hw
  x1, y1, _, y2 = box
  x = int(min(max(round(x1), 0), max(width - tw, 0)))
  places = []
  for y in (round(y1) - th, round(y1), round(y2)):
    y = int(y)
    if 0 <= y <= height - th:
      places.append((x, y))
  if not places:  # a label taller than the frame, or a box off the frame
    places.append((x, int(min(max(round(y1), 0), max(height - th, 0)))))
  for px, py in places:
    if not any(_overlaps((px, py, px + tw, py + th), t) for t in taken):
      return px, py
  return places[0]


def _label_text(inst, names) -> str:
  label = inst['label']
  name = names[label] if 0 <= label < len(names) else str(label)
  return f'{name} #{inst["id"]} {inst["score"]:.2f}'


def _anchor_box(inst, sx: float, sy: float):
  """The instance's box in overlay pixels: its 'box', else its mask's."""
  if inst.get('box') is not None:
    x1, y1, x2, y2 = inst['box']
    return x1 * sx, y1 * sy, x2 * sx, y2 * sy
  rows = np.flatnonzero(np.asarray(inst['mask']).any(1))
  cols = np.flatnonzero(np.asarray(inst['mask']).any(0))
  if not len(rows):
    return None
  return cols[0] * sx, rows[0] * sy, (cols[-1] + 1) * sx, (rows[-1] + 1) * sy


def draw_overlay(frame: np.ndarray, instances, names, *,
                 min_side: int = MIN_SIDE, resample: str = 'bilinear',
                 alpha: float = 0.5, boxes: bool = True, labels: bool = True,
                 font_size: int | None = None) -> np.ndarray:
  """The frame with each instance's mask, box and label "class #ID score".

  Args:
    frame: (H, W, 3) uint8 RGB.
    instances: dicts with 'id', 'label' (0-based class), 'score', 'mask'
      ((H, W) bool) and 'box' (x1, y1, x2, y2 in frame pixels; optional),
      as :meth:`iai_jax.inference.OnlineSegmenter.step` returns them.
    names: class names by label (a label past the end is shown as a number).
    min_side: upscale so the short side is at least this (0: never).
    resample: 'bilinear' or 'nearest', for the frame and the masks alike.
    alpha: opacity of the mask colour.
    boxes: draw each instance's box outline.
    labels: draw the labels.
    font_size: label text size in overlay pixels (default: from its size).

  Returns:
    (H', W', 3) uint8, H' x W' = :func:`output_size` of the frame.
  """
  from PIL import Image, ImageDraw
  frame = np.asarray(frame)
  h0, w0 = frame.shape[:2]
  size = output_size(h0, w0, min_side)
  sy, sx = size[0] / h0, size[1] / w0
  out = resize_frame(frame.astype(np.uint8), size, resample).astype(np.float32)
  for inst in instances:
    m = resize_mask(inst['mask'], size, resample)
    colour = np.array(id_colour(inst['id']), np.float32)
    out[m] = (1 - alpha) * out[m] + alpha * colour
  out = np.clip(np.round(out), 0, 255).astype(np.uint8)
  anchors = [_anchor_box(inst, sx, sy) for inst in instances]
  if boxes:
    img = Image.fromarray(out)
    draw = ImageDraw.Draw(img)
    line = max(2, round(min(size) / 192))
    for inst, box in zip(instances, anchors):
      if inst.get('box') is None:
        continue
      x1, y1, x2, y2 = box
      draw.rectangle([round(x1), round(y1), max(round(x2) - 1, round(x1)),
                      max(round(y2) - 1, round(y1))],
                     outline=id_colour(inst['id']), width=line)
    out = np.array(img)
  if not labels:
    return out
  px = font_size or default_font_size(*size)
  taken = []
  order = sorted(range(len(instances)), key=lambda i: -instances[i]['score'])
  for i in order:
    if anchors[i] is None:
      continue
    text = _label_text(instances[i], names)
    fs = px
    tile = label_tile(text, id_colour(instances[i]['id']), fs)
    while (tile.shape[1] > size[1] or tile.shape[0] > size[0]) and fs > 6:
      fs -= 1  # a frame too narrow for the label: smaller text, still whole
      tile = label_tile(text, id_colour(instances[i]['id']), fs)
    tile = tile[:size[0], :size[1]]
    x, y = place_label(anchors[i], size, tile.shape[:2], taken)
    out[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    taken.append((x, y, x + tile.shape[1], y + tile.shape[0]))
  return out


def frame_grid(images: Sequence[np.ndarray], columns: int = 4, gap: int = 4,
               background: int = 255) -> np.ndarray:
  """Images of one size tiled row by row, ``gap`` pixels apart."""
  if not len(images):
    raise ValueError('frame_grid needs at least one image')
  h, w = images[0].shape[:2]
  if any(im.shape[:2] != (h, w) for im in images):
    raise ValueError('frame_grid: the images differ in size')
  columns = max(1, min(columns, len(images)))
  rows = -(-len(images) // columns)
  grid = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap,
                  3), background, np.uint8)
  for k, im in enumerate(images):
    r, c = divmod(k, columns)
    grid[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = im[..., :3]
  return grid
