"""The synthetic video dataset: textured moving shapes, YouTube-VIS format.

Each video has a smooth random textured background and 1..``max_instances``
instances of four classes (circle, square, triangle, star). An instance has
its class's hue (jittered), a striped texture of its own, a size, a
rotation speed and a straight path; some enter after the first frame or
leave before the last, some move out of the picture. ``occlusion`` (0..1) is
the chance that an instance's path is bent to cross another's (otherwise it
is drawn to keep clear of the others where it can), and instances are drawn
in a random depth order, so crossing ones hide each other; the
annotations hold the *visible* masks (null where an instance is absent or
completely hidden), as in YouTube-VIS and OVIS.

Everything is drawn from ``numpy.random.default_rng([seed, video])``: the same
arguments give the same files. Shapes are polygons rasterised by pycocotools,
so ``mask_format='polygon'`` (where instances keep to separate lanes and never
overlap, so the polygon *is* the visible mask) stores exactly the masks the
frames were painted with; ``'rle'`` and ``'uncompressed'`` store the visible
masks as compressed / uncompressed RLE. Each annotation also has OVIS's
per-frame ``occlusion`` label (no / slight / severe: none, up to half, more
than half of the shape's in-picture area hidden by others).

  python -m iai_jax.data.synthetic --out=data/synthetic/train --videos=120
"""

from __future__ import annotations

import colorsys
import math
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

CLASSES = ('circle', 'square', 'triangle', 'star')
_HUES = (0.0, 0.33, 0.6, 0.13)
_CORNERS = {'circle': 24, 'square': 4, 'triangle': 3, 'star': 10}


def shape_polygon(cls: str, cx: float, cy: float, r: float,
                  angle: float) -> list[float]:
  """Flat [x0, y0, x1, y1, ...] outline of a shape of radius ``r``."""
  n = _CORNERS[cls]
  t = angle + 2 * math.pi * np.arange(n) / n
  rad = np.full(n, r)
  if cls == 'star':
    rad[1::2] = 0.45 * r
  xs, ys = cx + rad * np.cos(t), cy + rad * np.sin(t)
  return np.round(np.stack([xs, ys], 1).ravel(), 2).tolist()


def _raster(poly, h, w) -> np.ndarray:
  rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
  return mask_utils.decode(rle).astype(bool)


def _smooth_noise(rng, h, w, cells, channels=3) -> np.ndarray:
  grid = rng.uniform(0, 1, (cells + 1, cells + 1, channels)).astype(np.float32)
  img = Image.fromarray((grid * 255).astype(np.uint8))
  return np.asarray(img.resize((w, h), Image.BICUBIC)).astype(np.float32) / 255


def _instance(rng, k, n, h, w, num_frames, lanes: bool):
  cls = CLASSES[int(rng.integers(len(CLASSES)))]
  size = min(h, w)
  r = rng.uniform(0.18, 0.3) * size
  if lanes:  # polygon mode: instance k keeps to its own vertical lane
    lane = w / n
    r = min(r, 0.45 * lane)
    x0 = lane * (k + 0.5)
    vx = 0.0
    y0 = rng.uniform(0.15, 0.85) * h
    vy = rng.uniform(-0.03, 0.03) * h
  else:
    (x0, y0), (vx, vy) = _draw_path(rng, h, w)
  start, end = 0, num_frames
  if num_frames > 3 and rng.uniform() < 0.35:  # enters late or leaves early
    if rng.uniform() < 0.5:
      start = int(rng.integers(1, num_frames // 2 + 1))
    else:
      end = int(rng.integers(num_frames // 2 + 1, num_frames))
  hue = (_HUES[CLASSES.index(cls)] + rng.uniform(-0.04, 0.04)) % 1.0
  colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0),
                                        rng.uniform(0.7, 1.0)), np.float32)
  return {'cls': cls, 'r': r, 'p0': np.array([x0, y0]),
          'v': np.array([vx, vy]), 'start': start, 'end': end,
          'angle0': rng.uniform(0, 2 * math.pi),
          'spin': rng.uniform(-0.15, 0.15), 'colour': colour,
          'stripe': (rng.uniform(0.15, 0.5), rng.uniform(0, math.pi)),
          'depth': rng.uniform()}


def _draw_path(rng, h, w):
  """Start point and velocity (pixels per frame) of a straight path."""
  x0 = rng.uniform(0.1, 0.9) * w
  vx = rng.uniform(-0.04, 0.04) * w
  y0 = rng.uniform(0.15, 0.85) * h
  vy = rng.uniform(-0.03, 0.03) * h
  return np.array([x0, y0]), np.array([vx, vy])


def _clearance(a, b) -> float:
  """Least gap between the outer circles of a and b while both are shown."""
  lo, hi = max(a['start'], b['start']), min(a['end'], b['end'])
  if hi <= lo:
    return math.inf
  t = np.arange(lo, hi)[:, None]
  d = np.linalg.norm((a['p0'] + a['v'] * t) - (b['p0'] + b['v'] * t), axis=1)
  return float(d.min() - a['r'] - b['r'])


def _arrange_paths(rng, insts, h, w, occlusion: float, tries: int = 24):
  """Instance j > 0 crosses an earlier one with probability ``occlusion``.

  Crossing: its path is bent to meet an earlier instance's at a random
  common frame. Otherwise its path is redrawn (up to ``tries`` times) to keep
  clear of all earlier ones; the clearest draw is kept when none is clear
  (large shapes in a small picture), so ``occlusion=0`` still has some
  contact, far less than ``occlusion=1``.
  """
  for j in range(1, len(insts)):
    b = insts[j]
    if rng.uniform() < occlusion:
      i = int(rng.integers(j))
      a = insts[i]
      lo, hi = max(a['start'], b['start']), min(a['end'], b['end'])
      if hi - lo < 2:
        continue
      tc = int(rng.integers(lo, hi))
      target = a['p0'] + a['v'] * tc + rng.normal(0, 0.3 * a['r'], 2)
      b['p0'] = target - b['v'] * tc
      continue
    best = (min(_clearance(a, b) for a in insts[:j]), b['p0'], b['v'])
    for _ in range(tries):
      if best[0] >= 1:
        break
      b['p0'], b['v'] = _draw_path(rng, h, w)
      gap = min(_clearance(a, b) for a in insts[:j])
      if gap > best[0]:
        best = (gap, b['p0'], b['v'])
    b['p0'], b['v'] = best[1], best[2]


def render_video(rng, num_frames, h, w, max_instances, occlusion,
                 lanes=False):
  """-> (frames (T, h, w, 3) uint8, instances, visible masks (K, T, h, w),
  in-picture area of the whole shape (K, T))."""
  n = int(rng.integers(1, max_instances + 1))
  insts = [_instance(rng, k, n, h, w, num_frames, lanes) for k in range(n)]
  if not lanes:
    _arrange_paths(rng, insts, h, w, occlusion)
  # the background is larger than the picture: a slow camera pan crops it
  drift = rng.uniform(-1, 1, 2) * 0.5  # pixels per frame (y, x)
  pad = int(math.ceil(0.5 * num_frames)) + 1
  base = _smooth_noise(rng, h + 2 * pad, w + 2 * pad, 4)
  detail = _smooth_noise(rng, h + 2 * pad, w + 2 * pad, 16)
  background = 0.55 * base + 0.25 * detail
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  front_to_back = sorted(range(n), key=lambda k: -insts[k]['depth'])
  frames = np.zeros((num_frames, h, w, 3), np.uint8)
  masks = np.zeros((n, num_frames, h, w), bool)
  full_area = np.zeros((n, num_frames), np.int64)
  for t in range(num_frames):
    y0, x0 = pad + int(drift[0] * t), pad + int(drift[1] * t)
    img = background[y0:y0 + h, x0:x0 + w].copy()
    covered = np.zeros((h, w), bool)
    full = {}
    for k in front_to_back:
      s = insts[k]
      if not s['start'] <= t < s['end']:
        continue
      c = s['p0'] + s['v'] * t
      poly = shape_polygon(s['cls'], c[0], c[1], s['r'],
                           s['angle0'] + s['spin'] * t)
      m = _raster(poly, h, w)
      full[k] = m
      full_area[k, t] = m.sum()
      masks[k, t] = m & ~covered
      covered |= m
    for k in reversed(front_to_back):  # paint back to front
      if k not in full:
        continue
      s = insts[k]
      freq, theta = s['stripe']
      stripes = 0.8 + 0.2 * np.sin(freq * (xx * math.cos(theta)
                                           + yy * math.sin(theta)))
      img[full[k]] = (s['colour'][None] * stripes[full[k]][:, None])
    frames[t] = np.clip(img * 255, 0, 255).astype(np.uint8)
  return frames, insts, masks, full_area


def occlusion_level(hidden: float) -> str:
  """OVIS's per-frame label of the hidden share of an instance."""
  if hidden <= 0:
    return 'no_occlusion'
  return 'slight_occlusion' if hidden <= 0.5 else 'severe_occlusion'


def _encode(mask: np.ndarray, fmt: str, poly):
  if fmt == 'polygon':
    return [list(poly)]
  rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  if fmt == 'rle':
    return {'size': list(rle['size']), 'counts': rle['counts'].decode()}
  # uncompressed: run lengths in column-major order, starting with zeros
  flat = mask.ravel(order='F').astype(np.int8)
  change = np.flatnonzero(np.diff(flat)) + 1
  bounds = np.concatenate([[0], change, [flat.size]])
  counts = np.diff(bounds).tolist()
  if flat[0] == 1:
    counts = [0] + counts
  return {'size': list(mask.shape), 'counts': counts}


def generate(out_dir: str, num_videos: int, num_frames: int, height: int,
             width: int, max_instances: int, occlusion: float, seed: int,
             mask_format: str = 'rle', ann_name: str = 'annotations.json',
             frames_dir: str = 'JPEGImages') -> str:
  """Writes ``out_dir/frames_dir/<video>/<t>.jpg`` and ``out_dir/ann_name``.

  Returns the annotation file's path.
  """
  if mask_format not in ('rle', 'uncompressed', 'polygon'):
    raise ValueError(f'mask_format must be rle, uncompressed or polygon, '
                     f'got {mask_format!r}')
  videos, anns = [], []
  for vi in range(num_videos):
    rng = np.random.default_rng([seed, vi])
    lanes = mask_format == 'polygon'
    frames, insts, masks, full_area = render_video(rng, num_frames, height, width,
                                        max_instances, occlusion, lanes)
    name = f'{vi:05d}'
    os.makedirs(os.path.join(out_dir, frames_dir, name), exist_ok=True)
    files = []
    for t in range(num_frames):
      fn = f'{name}/{t:05d}.jpg'
      Image.fromarray(frames[t]).save(os.path.join(out_dir, frames_dir, fn),
                                      quality=95)
      files.append(fn)
    vid = vi + 1
    videos.append({'id': vid, 'width': width, 'height': height,
                   'length': num_frames, 'file_names': files})
    for k, s in enumerate(insts):
      segs, boxes, areas, occ = [], [], [], []
      for t in range(num_frames):
        m = masks[k, t]
        if not m.any():
          segs.append(None), boxes.append(None), areas.append(None)
          occ.append(None)
          continue
        occ.append(occlusion_level(1 - m.sum() / full_area[k, t]))
        c = s['p0'] + s['v'] * t
        poly = shape_polygon(s['cls'], c[0], c[1], s['r'],
                             s['angle0'] + s['spin'] * t)
        if mask_format == 'polygon' and not np.array_equal(
            m, _raster(poly, height, width)):
          raise AssertionError('polygon and painted mask differ')  # lanes
        segs.append(_encode(m, mask_format, poly))
        ys, xs = np.nonzero(m)
        boxes.append([int(xs.min()), int(ys.min()),
                      int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)])
        areas.append(int(m.sum()))
      if all(sg is None for sg in segs):
        continue
      anns.append({'id': len(anns) + 1, 'video_id': vid,
                   'category_id': CLASSES.index(s['cls']) + 1, 'iscrowd': 0,
                   'segmentations': segs, 'bboxes': boxes, 'areas': areas,
                   'occlusion': occ, 'height': height, 'width': width, 'length': 1})
  data = {'info': {'description': 'iai_jax synthetic videos', 'seed': seed,
                   'occlusion': occlusion},
          'videos': videos, 'annotations': anns,
          'categories': [{'id': i + 1, 'name': n, 'supercategory': 'shape'}
                         for i, n in enumerate(CLASSES)]}
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, ann_name)
  from iai_jax import atomic  # the annotation file last: a complete dataset
  atomic.write_json(path, data)
  return path


def _define_flags(fv) -> None:
  from absl import flags
  flags.DEFINE_string('out', None, 'Output folder.', flag_values=fv)
  flags.DEFINE_integer('videos', 120, 'Number of videos.', flag_values=fv)
  flags.DEFINE_integer('frames', 12, 'Frames a video.', flag_values=fv)
  flags.DEFINE_integer('height', 96, 'Frame height.', flag_values=fv)
  flags.DEFINE_integer('width', 160, 'Frame width.', flag_values=fv)
  flags.DEFINE_integer('max_instances', 4, 'Instances a video (at most).',
                       flag_values=fv)
  flags.DEFINE_float('occlusion', 0.3, '0..1, how often paths cross.',
                     flag_values=fv)
  flags.DEFINE_integer('seed', 0, 'Random seed.', flag_values=fv)
  flags.DEFINE_enum('mask_format', 'rle', ['rle', 'uncompressed', 'polygon'],
                    'How the masks are stored.', flag_values=fv)
  flags.mark_flag_as_required('out', flag_values=fv)


def main(argv=None):
  """``python -m iai_jax.data.synthetic --out=DIR [--videos=120] ...``"""
  from iai_jax import cli
  a = cli.parse_own_flags(argv, _define_flags,
                          'python -m iai_jax.data.synthetic --out=DIR '
                          '[--videos=120] [--frames=12] ...')
  print(generate(a.out, a.videos, a.frames, a.height, a.width, a.max_instances,
                 a.occlusion, a.seed, a.mask_format))


if __name__ == '__main__':
  main()
