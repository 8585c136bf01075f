"""Overlays: upscaled small frames, readable labels inside the frame, one
colour per track ID. Everything is checked on the drawn pixels."""

import numpy as np
import pytest

from iai_jax import overlay

NAMES = ['circle', 'star', 'rectangle', 'triangle']
H, W = 96, 160   # the synthetic frames; x4 gives 384x640


def _inst(track_id, box, label=1, score=0.72):
  """An instance whose mask fills its box (x1, y1, x2, y2, frame pixels)."""
  x1, y1, x2, y2 = box
  mask = np.zeros((H, W), bool)
  mask[y1:y2, x1:x2] = True
  return {'id': track_id, 'label': label, 'score': score, 'box': list(box),
          'mask': mask}


def _black():
  return np.zeros((H, W, 3), np.uint8)


def _exact(out, colour):
  return np.all(out == np.array(colour, np.uint8), axis=-1)


def _label_rect(out, track_id):
  """(top, left, bottom, right) (inclusive) of the pixels that have the
  ID's exact colour: on a black frame, without boxes, only the label's
  filled background has it (a mask blended at alpha 0.5 is half as bright)."""
  ys, xs = np.nonzero(_exact(out, overlay.id_colour(track_id)))
  assert len(ys), 'no label drawn'
  return ys.min(), xs.min(), ys.max(), xs.max()


def _text_rows(out, rect):
  """Rows of the label box that hold text (pixels far from its colour)."""
  top, left, bottom, right = rect
  tile = out[top:bottom + 1, left:right + 1].astype(int)
  background = tile[0, 0]
  ink = np.abs(tile - background).sum(-1) > 150
  rows = np.flatnonzero(ink.any(1))
  return rows, ink


def test_small_frame_is_upscaled_and_label_is_readable_inside_it():
  middle = overlay.draw_overlay(_black(), [_inst(2, (60, 40, 80, 52))], NAMES,
                                boxes=False)
  assert middle.shape == (384, 640, 3)
  top, left, bottom, right = _label_rect(middle, 2)
  # above the box, at the box's corner in upscaled pixels (60*4, 40*4)
  assert (left, bottom + 1) == (240, 160)
  label_h, label_w = bottom - top + 1, right - left + 1
  rows, ink = _text_rows(middle, (top, left, bottom, right))
  # text of a readable height at the upscaled size (not 96-px-frame text
  # magnified: a 4x4-pixel block structure would leave only a few rows)
  assert rows.max() - rows.min() + 1 >= 11
  assert label_h >= 16 and ink.sum() > 150
  assert len(np.unique(ink.sum(1))) > 5

  # the same object in the top-right corner: the label is moved, not cut
  corner = overlay.draw_overlay(_black(), [_inst(2, (140, 0, 160, 12))], NAMES,
                                boxes=False)
  top, left, bottom, right = _label_rect(corner, 2)
  assert (bottom - top + 1, right - left + 1) == (label_h, label_w)
  assert top == 0 and right == 639
  assert 0 <= left and bottom < 384

  # and at the bottom-left corner
  low = overlay.draw_overlay(_black(), [_inst(2, (0, 88, 10, 96))], NAMES,
                             boxes=False)
  top, left, bottom, right = _label_rect(low, 2)
  assert (bottom - top + 1, right - left + 1) == (label_h, label_w)
  assert left == 0
  assert bottom + 1 == 88 * 4  # above the box, which starts at row 352


def test_label_says_class_id_and_score():
  one = overlay.draw_overlay(_black(), [_inst(2, (60, 40, 80, 52), label=1,
                                              score=0.72)], NAMES, boxes=False)
  longer = overlay.draw_overlay(_black(), [_inst(2, (60, 40, 80, 52), label=2,
                                                 score=0.72)], NAMES,
                                boxes=False)
  w_star = _label_rect(one, 2)[3] - _label_rect(one, 2)[1]
  w_rect = _label_rect(longer, 2)[3] - _label_rect(longer, 2)[1]
  # 'rectangle' is five letters longer than 'star'
  assert w_rect - w_star > 5 * 5
  assert overlay._label_text(_inst(12, (0, 0, 4, 4), label=3, score=0.456),
                             NAMES) == 'triangle #12 0.46'


def test_two_ids_get_different_colours_and_labels_do_not_cover_each_other():
  a, b = _inst(0, (10, 30, 50, 70)), _inst(1, (100, 30, 140, 70))
  out = overlay.draw_overlay(_black(), [a, b], NAMES, boxes=False)
  in_a, in_b = out[50 * 4, 30 * 4].astype(int), out[50 * 4, 120 * 4].astype(int)
  assert np.abs(in_a - in_b).max() > 60
  assert _exact(out, overlay.id_colour(0)).sum() > 0
  assert _exact(out, overlay.id_colour(1)).sum() > 0
  # the same box for both: the second label goes elsewhere
  c, d = _inst(3, (60, 40, 80, 52), score=0.9), _inst(4, (60, 40, 80, 52),
                                                      score=0.8)
  both = overlay.draw_overlay(_black(), [c, d], NAMES, boxes=False)
  r3, r4 = _label_rect(both, 3), _label_rect(both, 4)
  assert r3[2] < r4[0] or r4[2] < r3[0] or r3[3] < r4[1] or r4[3] < r3[1]


def test_one_id_keeps_its_colour_across_frames():
  """ID 5 moves, changes class and score, and other IDs come and go."""
  video = [
      [_inst(5, (10, 20, 40, 50), label=0, score=0.9)],
      [_inst(8, (60, 10, 90, 40)), _inst(5, (30, 30, 60, 60), label=2,
                                         score=0.4)],
      [_inst(1, (100, 50, 150, 90)), _inst(9, (0, 0, 20, 20)),
       _inst(5, (70, 40, 100, 70), label=3, score=0.61)],
  ]
  mask_colours, label_colours = set(), set()
  for instances in video:
    out = overlay.draw_overlay(_black(), instances, NAMES, boxes=False)
    x1, y1, x2, y2 = instances[-1]['box']
    centre = out[(y1 + y2) * 2, (x1 + x2) * 2]
    mask_colours.add(tuple(centre))
    top, left, _, _ = _label_rect(out, 5)
    label_colours.add(tuple(out[top, left]))
  assert len(mask_colours) == 1 and len(label_colours) == 1
  # half of the ID's colour on a black frame
  assert np.allclose(next(iter(mask_colours)),
                     np.array(overlay.id_colour(5)) / 2, atol=1)


def test_masks_follow_the_upscaled_frame():
  inst = _inst(0, (60, 40, 100, 60))
  expected = np.zeros((384, 640), bool)
  expected[160:240, 240:400] = True   # rows 40..59, cols 60..99, times 4
  near = overlay.draw_overlay(_black(), [inst], NAMES, boxes=False,
                              labels=False, resample='nearest')
  assert np.array_equal(near.sum(-1) > 0, expected)
  # bilinear (the default) puts the edges in the same place and rounds off
  # the corners: the single corner pixel interpolates to 0.625**2 < 0.5
  smooth = overlay.draw_overlay(_black(), [inst], NAMES, boxes=False,
                                labels=False)
  tinted = smooth.sum(-1) > 0
  assert np.flatnonzero(tinted[:, 320]).tolist() == list(range(160, 240))
  assert np.flatnonzero(tinted[200]).tolist() == list(range(240, 400))
  assert sorted(zip(*np.nonzero(tinted != expected))) == [
      (160, 240), (160, 399), (239, 240), (239, 399)]
  # nearest: each frame pixel becomes a 4x4 block, the mask with it
  rng = np.random.default_rng(0)
  frame = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
  near = overlay.draw_overlay(frame, [], NAMES, resample='nearest')
  assert np.array_equal(near, np.repeat(np.repeat(frame, 4, 0), 4, 1))
  # a large frame is not resized
  big = np.zeros((480, 640, 3), np.uint8)
  assert overlay.draw_overlay(big, [], NAMES).shape == (480, 640, 3)
  assert overlay.output_size(100, 50) == (768, 384)


def test_boxes_are_optional():
  inst = _inst(6, (20, 20, 60, 50))
  colour = overlay.id_colour(6)
  with_box = overlay.draw_overlay(_black(), [inst], NAMES, labels=False)
  without = overlay.draw_overlay(_black(), [inst], NAMES, labels=False,
                                 boxes=False)
  # the outline's corners at the upscaled box (80, 80) .. (239, 199)
  for y, x in ((80, 80), (80, 239), (199, 80), (199, 239)):
    assert tuple(with_box[y, x]) == colour
  assert not _exact(without, colour).any()


def test_without_freetype_the_bitmap_font_is_enlarged(monkeypatch):
  monkeypatch.setattr(overlay, '_truetype_font', lambda size: None)
  out = overlay.draw_overlay(_black(), [_inst(2, (140, 0, 160, 12))], NAMES,
                             boxes=False)
  top, left, bottom, right = _label_rect(out, 2)
  assert top == 0 and right == 639
  rows, _ = _text_rows(out, (top, left, bottom, right))
  assert rows.max() - rows.min() + 1 >= 11


def test_frame_grid():
  images = [np.full((4, 6, 3), v, np.uint8) for v in (10, 20, 30)]
  grid = overlay.frame_grid(images, columns=2, gap=1, background=0)
  assert grid.shape == (9, 13, 3)
  assert grid[0, 0, 0] == 10 and grid[0, 7, 0] == 20 and grid[5, 0, 0] == 30
  assert grid[8, 12, 0] == 0
  with pytest.raises(ValueError, match='differ in size'):
    overlay.frame_grid([images[0], np.zeros((5, 6, 3), np.uint8)])


def test_readme_opens_with_the_overlay_still():
  """README's picture: referenced before any section, committed, small, and
  made by a script in scripts/."""
  import os
  import re

  from PIL import Image
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(repo, 'README.md')) as fh:
    head = fh.read().split('\n## ', 1)[0]
  images = re.findall(r'!\[[^\]]*\]\(([^)]+\.png)\)', head)
  assert images == ['docs/overlay_synthetic.png']
  path = os.path.join(repo, images[0])
  assert os.path.getsize(path) < 200 * 1024
  with Image.open(path) as img:
    assert img.format == 'PNG' and min(img.size) >= overlay.MIN_SIDE
  assert os.path.exists(os.path.join(repo, 'scripts', 'overlay_still.py'))
