"""Drawing a frame's instances: masks, boxes, class names, IDs and scores."""

from __future__ import annotations

import colorsys

import numpy as np


def id_colour(track_id: int) -> tuple[int, int, int]:
  """A stable, well-spread colour for an ID (golden-angle hue steps)."""
  h = (track_id * 0.618033988749895) % 1.0
  r, g, b = colorsys.hsv_to_rgb(h, 0.75, 1.0)
  return int(r * 255), int(g * 255), int(b * 255)


def draw_overlay(frame: np.ndarray, instances, names) -> np.ndarray:
  """The frame with each instance's mask, box, class name and score."""
  from PIL import Image, ImageDraw
  out = frame.astype(np.float32)
  for inst in instances:
    colour = np.array(id_colour(inst['id']), np.float32)
    m = inst['mask']
    out[m] = 0.5 * out[m] + 0.5 * colour
  img = Image.fromarray(out.astype(np.uint8))
  draw = ImageDraw.Draw(img)
  for inst in instances:
    colour = id_colour(inst['id'])
    x1, y1, x2, y2 = inst['box']
    draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
    label = names[inst['label']] if inst['label'] < len(names) else str(inst['label'])
    draw.text((x1 + 3, max(y1 - 12, 0)), f'{inst["id"]} {label} {inst["score"]:.2f}',
              fill=colour)
  return np.asarray(img)
