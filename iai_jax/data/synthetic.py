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


def center(s: dict, t: int) -> np.ndarray:
  """(x, y) centre of instance ``s`` at frame ``t``."""
  if 'centers' in s:
    return s['centers'][t]
  return s['p0'] + s['v'] * t


def shown(s: dict, t: int) -> bool:
  """Whether instance ``s`` is in the scene at frame ``t``."""
  if 'shown' in s:
    return bool(s['shown'][t])
  return s['start'] <= t < s['end']


def render_video(rng, num_frames, h, w, max_instances, occlusion,
                 lanes=False):
  """-> (frames (T, h, w, 3) uint8, instances, visible masks (K, T, h, w),
  in-picture area of the whole shape (K, T))."""
  n = int(rng.integers(1, max_instances + 1))
  insts = [_instance(rng, k, n, h, w, num_frames, lanes) for k in range(n)]
  if not lanes:
    _arrange_paths(rng, insts, h, w, occlusion)
  return paint(rng, insts, num_frames, h, w)


def paint(rng, insts, num_frames, h, w, occluder=None):
  """Draw the instances (front to back by 'depth') over a panning textured
  background; ``occluder`` (x0, x1): an opaque band in front of them all.
  -> (frames, insts, visible masks (K, T, h, w), shape area (K, T))."""
  n = len(insts)
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
  band = np.zeros((h, w), bool)
  if occluder is not None:
    band[:, occluder[0]:occluder[1]] = True
    wall = 0.35 + 0.1 * ((xx // 4 + yy // 4) % 2)[..., None] * np.ones(3)
  for t in range(num_frames):
    y0, x0 = pad + int(drift[0] * t), pad + int(drift[1] * t)
    img = background[y0:y0 + h, x0:x0 + w].copy()
    covered = band.copy()
    full = {}
    for k in front_to_back:
      s = insts[k]
      if not shown(s, t):
        continue
      c = center(s, t)
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
    if occluder is not None:
      img[band] = wall[band]
    frames[t] = np.clip(img * 255, 0, 255).astype(np.uint8)
  return frames, insts, masks, full_area


# ----------------------------------------------------------------- re-id
REID_ROLES = ('occluded', 'exit', 'look_alike', 'fast')


def _look(rng, cls, value=None):
  """Colour and stripes of an instance of class ``cls``."""
  hue = (_HUES[CLASSES.index(cls)] + rng.uniform(-0.04, 0.04)) % 1.0
  value = rng.uniform(0.7, 1.0) if value is None else value
  colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), value),
                    np.float32)
  return colour, (rng.uniform(0.15, 0.5), rng.uniform(0, math.pi))


def _track(rng, cls, r, centers, shown, role, value=None):
  colour, stripe = _look(rng, cls, value)
  return {'cls': cls, 'r': r, 'centers': centers, 'shown': shown,
          'angle0': rng.uniform(0, 2 * math.pi),
          'spin': rng.uniform(-0.1, 0.1), 'colour': colour, 'stripe': stripe,
          'depth': rng.uniform(), 'role': role}


def _reflect(x, lo, hi):
  """Positions bouncing between lo and hi."""
  span = hi - lo
  m = np.mod(x - lo, 2 * span)
  return lo + np.where(m > span, 2 * span - m, m)


def reid_video(rng, num_frames: int, h: int, w: int):
  """A re-identification video: instances that (a) hide behind an opaque
  band for 3-15 frames or (b) leave the picture and come back after 3-15
  frames, (c) a pair of look-alikes (same class and shape, other colour and
  stripes) whose paths cross, (d) a fast one (moving about its diameter a
  frame), and one of them entering mid-video.

  -> (frames, instances, visible masks, shape areas, occluder (x0, x1)).
  """
  t_len = num_frames
  t = np.arange(t_len, dtype=np.float64)
  size = min(h, w)
  bw = int(0.3 * w)
  b0 = int(rng.uniform(0.25, 0.75) * w - bw / 2)
  band_c = b0 + bw / 2
  cls_of = lambda: CLASSES[int(rng.integers(len(CLASSES)))]
  radius = lambda: rng.uniform(0.15, 0.19) * size
  ys = lambda r: rng.uniform(r + 2, h - r - 2)
  insts = []
  # the one that enters mid-video: (b) or (d)
  late_role = 'exit' if rng.uniform() < 0.5 else 'fast'
  first = int(rng.integers(t_len // 4, t_len // 2 + 1))

  # (a) behind the band for `gap` frames or more (up to ~1.7x for a star or
  # a triangle, whose extent is less than the radius): 3..15
  r = radius()
  gap = int(rng.integers(3, 9))
  v = (bw - 2 * r) / (gap + 0.5)
  direction = rng.choice([-1.0, 1.0])
  t_mid = rng.uniform(gap / 2 + 8, t_len - gap / 2 - 8)
  cx = band_c + direction * v * (t - t_mid)
  insts.append(_track(rng, cls_of(), r, np.stack([cx, np.full(t_len, ys(r))],
                                                 1), np.ones(t_len, bool),
                      'occluded'))

  # (b) out of the picture for `gap` frames (turns round behind an edge)
  r = radius()
  gap = int(rng.integers(3, 13))
  v = rng.uniform(3.0, 6.0)
  right = rng.uniform() < 0.5
  wall = w + r + v * gap / 2 if right else -r - v * gap / 2
  t_turn = rng.uniform(first + 8 if late_role == 'exit' else 12, t_len - 12)
  inward = -1.0 if right else 1.0
  cx = wall + inward * v * np.abs(t - t_turn)
  insts.append(_track(rng, cls_of(), r, np.stack([cx, np.full(t_len, ys(r))],
                                                 1), np.ones(t_len, bool),
                      'exit'))

  # (c) look-alikes crossing outside the band
  cls, r = cls_of(), radius()
  t_cross = rng.uniform(10, t_len - 10)
  free = [x for x in (b0 / 2, (b0 + bw + w) / 2) if r < x < w - r]
  x_cross = float(rng.choice(free)) if free else w / 4
  y_cross = ys(r)
  v = rng.uniform(1.5, 3.0)
  for k, sign in enumerate((1.0, -1.0)):
    cx = x_cross + sign * v * (t - t_cross)
    cy = np.full(t_len, y_cross + rng.uniform(-0.3, 0.3) * r)
    insts.append(_track(rng, cls, r, np.stack([cx, cy], 1),
                        np.ones(t_len, bool), 'look_alike',
                        value=(1.0, 0.6)[k]))

  # (d) fast: about its diameter a frame, bouncing off the edges
  r = radius()
  speed = rng.uniform(1.0, 1.3) * 2 * r
  ang = rng.uniform(0.2, 0.6) * rng.choice([-1, 1]) + rng.choice([0, math.pi])
  p0 = np.array([rng.uniform(r, w - r), rng.uniform(r, h - r)])
  cx = _reflect(p0[0] + speed * math.cos(ang) * t, r, w - r)
  cy = _reflect(p0[1] + speed * math.sin(ang) * t, r, h - r)
  insts.append(_track(rng, cls_of(), r, np.stack([cx, cy], 1),
                      np.ones(t_len, bool), 'fast'))

  late = 1 if late_role == 'exit' else len(insts) - 1
  insts[late]['shown'] = t >= first
  insts[late]['late'] = True
  frames, insts, masks, full_area = paint(rng, insts, t_len, h, w,
                                          occluder=(b0, b0 + bw))
  return frames, insts, masks, full_area, (b0, b0 + bw)


def track_events(masks: np.ndarray, full_masks=None) -> dict:
  """What a track does, from its visible masks (T, h, w): 'first_frame',
  'gaps' [[start, end), ...] (runs of frames without a visible pixel between
  visible ones) and 'consecutive_iou' (mean IoU of the visible masks of
  consecutive frames)."""
  vis = masks.reshape(len(masks), -1).any(axis=1)
  frames = np.flatnonzero(vis)
  gaps = []
  for a, b in zip(frames[:-1], frames[1:]):
    if b > a + 1:
      gaps.append([int(a + 1), int(b)])
  ious = []
  for a in range(len(masks) - 1):
    if vis[a] and vis[a + 1]:
      inter = (masks[a] & masks[a + 1]).sum()
      ious.append(inter / (masks[a] | masks[a + 1]).sum())
  return {'first_frame': int(frames[0]) if frames.size else -1,
          'gaps': gaps,
          'consecutive_iou': float(np.mean(ious)) if ious else 0.0}


def crossings(a: np.ndarray, b: np.ndarray) -> int:
  """Crossing events of two tracks: runs of frames where their visible
  masks touch (share a pixel or sit side by side)."""
  touch = [bool((_grow(a[t]) & b[t]).any()) for t in range(len(a))]
  return sum(1 for t in range(len(touch))
             if touch[t] and (t == 0 or not touch[t - 1]))


def _grow(m: np.ndarray) -> np.ndarray:
  out = m.copy()
  out[1:] |= m[:-1]
  out[:-1] |= m[1:]
  out[:, 1:] |= m[:, :-1]
  out[:, :-1] |= m[:, 1:]
  return out


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
             frames_dir: str = 'JPEGImages', kind: str = 'tracks') -> str:
  """Writes ``out_dir/frames_dir/<video>/<t>.jpg`` and ``out_dir/ann_name``.

  ``kind``: 'tracks' (:func:`render_video`) or 'reid' (:func:`reid_video`;
  ``max_instances`` and ``occlusion`` are not used; each annotation gets a
  'reid' entry: its role, 'late' (entered mid-video), 'first_frame',
  'gaps', 'consecutive_iou' and, for a look-alike, 'look_alike_of' and
  'crossings' with it). Returns the annotation file's path.
  """
  if mask_format not in ('rle', 'uncompressed', 'polygon'):
    raise ValueError(f'mask_format must be rle, uncompressed or polygon, '
                     f'got {mask_format!r}')
  if kind not in ('tracks', 'reid'):
    raise ValueError(f'kind must be tracks or reid, got {kind!r}')
  videos, anns = [], []
  for vi in range(num_videos):
    rng = np.random.default_rng([seed, vi])
    lanes = mask_format == 'polygon'
    if kind == 'reid':
      frames, insts, masks, full_area, _ = reid_video(rng, num_frames, height,
                                                      width)
    else:
      frames, insts, masks, full_area = render_video(
          rng, num_frames, height, width, max_instances, occlusion, lanes)
    ann_ids = {}
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
        c = center(s, t)
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
      ann_ids[k] = len(anns) + 1
      anns.append({'id': len(anns) + 1, 'video_id': vid,
                   'category_id': CLASSES.index(s['cls']) + 1, 'iscrowd': 0,
                   'segmentations': segs, 'bboxes': boxes, 'areas': areas,
                   'occlusion': occ, 'height': height, 'width': width, 'length': 1})
      if kind == 'reid':
        anns[-1]['reid'] = dict(track_events(masks[k]), role=s['role'],
                                late=bool(s.get('late', False)))
    if kind == 'reid':
      pair = [k for k, s in enumerate(insts) if s['role'] == 'look_alike']
      if len(pair) == 2 and all(k in ann_ids for k in pair):
        n_cross = crossings(masks[pair[0]], masks[pair[1]])
        for a, b in (pair, pair[::-1]):
          entry = anns[ann_ids[a] - 1]['reid']
          entry['look_alike_of'] = ann_ids[b]
          entry['crossings'] = n_cross
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
  flags.DEFINE_enum('kind', 'tracks', ['tracks', 'reid'],
                    'tracks: moving shapes; reid: the re-identification '
                    'scenario (gaps, look-alikes, fast, late).', flag_values=fv)
  flags.mark_flag_as_required('out', flag_values=fv)


def main(argv=None):
  """``python -m iai_jax.data.synthetic --out=DIR [--videos=120] ...``"""
  from iai_jax import cli
  a = cli.parse_own_flags(argv, _define_flags,
                          'python -m iai_jax.data.synthetic --out=DIR '
                          '[--videos=120] [--frames=12] ...')
  print(generate(a.out, a.videos, a.frames, a.height, a.width, a.max_instances,
                 a.occlusion, a.seed, a.mask_format, kind=a.kind))


if __name__ == '__main__':
  main()
