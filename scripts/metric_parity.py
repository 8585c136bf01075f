"""Parity check: iai_jax.evaluate against the official YouTube-VIS / OVIS code.

Never run by the tests (the official code is not part of this repository).
Get youtubevos/cocoapi (PythonAPI/pycocotools/ytvos.py, ytvoseval.py) and the
OVIS fork qjy981010/cocoapi (ovis.py, oviseval.py), put the four files in one
folder and patch them for Python 3.11 / numpy 2 / no matplotlib:
  * `from . import mask as maskUtils` -> `from pycocotools import mask as maskUtils`
  * comment out the matplotlib imports (only showAnns uses them)
  * `type(resFile) == unicode` -> `False`
  * `.astype(dtype=np.float)` -> `.astype(dtype=float)`
  * ytvoseval Params: np.linspace(..., np.round(x) + 1) -> int(np.round(x)) + 1
    (same values)

  python scripts/metric_parity.py --official=DIR [--ytvis=N] [--ovis=N] [--seed=S]

Random ground truth / results (polygons, RLE, uncompressed RLE, crowd, nulls,
area boundaries, score ties, > 100 results, short predictions, OVIS
occlusion) go through both; prints the max |official - ours| per statistic.
"""

import contextlib
import copy
import io
import json
import os
import sys
import tempfile
import time

import numpy as np

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
_OFFICIAL = flags.DEFINE_string(
    'official', os.path.join(HERE, 'official'),
    'folder with the patched ytvos/ytvoseval/ovis/oviseval.py')
flags.DEFINE_integer('ytvis', 200, 'YouTube-VIS cases')
flags.DEFINE_integer('ovis', 100, 'OVIS cases')
flags.DEFINE_integer('empty', 10, 'extra empty-results cases per metric')
flags.DEFINE_integer('seed', 20240611, 'random seed')
# The official modules are imported from --official before absl runs main.
flags.FLAGS(sys.argv, known_only=True)
sys.path.insert(0, os.path.abspath(_OFFICIAL.value))
sys.path.insert(0, os.path.dirname(HERE))

from pycocotools import mask as mask_utils  # noqa: E402
import ytvos as off_ytvos  # noqa: E402
import ytvoseval as off_ytvoseval  # noqa: E402
import ovis as off_ovis  # noqa: E402
import oviseval as off_oviseval  # noqa: E402
from iai_jax import evaluate as ours  # noqa: E402

YTVIS_KEYS = list(ours.YTVIS_KEYS)
OVIS_KEYS = list(ours.OVIS_KEYS)
OCC = ['no_occlusion', 'slight_occlusion', 'severe_occlusion']
TOL = 1e-9

# ------------------------------------------------------------------ masks


def rect_mask(rng, h, w, big=False):
  m = np.zeros((h, w), np.uint8)
  if big:
    r = rng.random()
    if r < .25:
      m[:] = 1  # full frame (large in a 270x250 video)
      return m
    lo = 0.9 if r < .5 else 0.5
    rh, rw = rng.integers(int(h * lo), h + 1), rng.integers(int(w * lo), w + 1)
  else:
    rh, rw = rng.integers(2, max(3, h // 2)), rng.integers(2, max(3, w // 2))
  y, x = rng.integers(0, h - rh + 1), rng.integers(0, w - rw + 1)
  m[y:y + rh, x:x + rw] = 1
  return m


def blob_mask(rng, h, w):
  yy, xx = np.mgrid[:h, :w]
  m = np.zeros((h, w), bool)
  for _ in range(rng.integers(1, 3)):
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = rng.uniform(2, h / 3), rng.uniform(2, w / 3)
    m |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
  return m.astype(np.uint8)


def exact128_mask(rng, h, w):
  m = np.zeros((h, w), np.uint8)
  y, x = rng.integers(0, h - 128 + 1), rng.integers(0, w - 128 + 1)
  m[y:y + 128, x:x + 128] = 1
  return m


def shift(m, dy, dx):
  out = np.zeros_like(m)
  h, w = m.shape
  ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
  xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
  out[yd, xd] = m[ys, xs]
  return out


def perturb(rng, m, strength):
  """Shift / grow / shrink / flip pixels; strength in [0, 1]."""
  if strength == 0:
    return m.copy()
  k = int(round(strength * 4))
  out = shift(m, int(rng.integers(-k, k + 1)), int(rng.integers(-k, k + 1)))
  r = rng.random()
  if r < 0.3:  # grow
    out = out | shift(out, 1, 0) | shift(out, 0, 1)
  elif r < 0.5:  # shrink
    out = out & shift(out, 1, 0) & shift(out, 0, 1)
  if rng.random() < 0.3:
    flip = rng.random(m.shape) < 0.05 * strength
    out = out ^ flip.astype(np.uint8)
  return out.astype(np.uint8)


def to_crle(m):
  r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
  return {'size': [int(r['size'][0]), int(r['size'][1])],
          'counts': r['counts'].decode('ascii')}


def to_urle(m):
  flat = m.flatten(order='F').astype(np.int8)
  counts, cur, run = [], 0, 0
  for v in flat:
    if v == cur:
      run += 1
    else:
      counts.append(run)
      cur, run = v, 1
  counts.append(run)
  return {'size': [int(m.shape[0]), int(m.shape[1])], 'counts': counts}


def random_polygon(rng, h, w):
  """A polygon list (1 or 2 parts) and its decoded mask."""
  parts = []
  for _ in range(rng.integers(1, 3)):
    cy, cx = rng.uniform(3, h - 3), rng.uniform(3, w - 3)
    n = rng.integers(3, 8)
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = rng.uniform(2, min(h, w) / 3, n)
    pts = []
    for a, r in zip(ang, rad):
      pts += [float(np.clip(cx + r * np.cos(a), 0, w)),
              float(np.clip(cy + r * np.sin(a), 0, h))]
    parts.append([round(p, 2) for p in pts])
  m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(parts, h, w)))
  return parts, m


# ------------------------------------------------------------------ case generator


def gen_areas(rng, masks):
  """Stored GT `areas` list: scaled so track means span small/medium/large."""
  true = [None if m is None else float(m.sum()) for m in masks]
  present = [i for i, a in enumerate(true) if a is not None]
  kind = rng.choice(['natural', 'small', 'medium', 'large', 'b16384', 'b65536',
                     'pair16384', 'pair65536', 'zero', 'int'],
                    p=[.14, .12, .14, .14, .1, .08, .08, .06, .06, .08])
  areas = [None] * len(masks)
  if not present:
    return areas
  if kind == 'natural':
    areas = [a if a is None else int(a) for a in true]
  elif kind in ('small', 'medium', 'large'):
    target = {'small': rng.uniform(20, 16384), 'medium': rng.uniform(16384, 65536),
              'large': rng.uniform(65536, 3e5)}[kind]
    mean = np.mean([true[i] for i in present]) or 1.0
    for i in present:
      areas[i] = (true[i] or mean) * target / mean
  elif kind in ('b16384', 'b65536'):
    v = 16384 if kind == 'b16384' else 65536
    for i in present:
      areas[i] = v if rng.random() < .5 else float(v)
  elif kind in ('pair16384', 'pair65536'):
    v = 16384 if kind == 'pair16384' else 65536
    d = int(rng.integers(1, 500))
    for j, i in enumerate(present):
      areas[i] = v - d if j % 2 == 0 else v + d
    if len(present) % 2 == 1:
      areas[present[-1]] = v  # keep the mean exactly v
  elif kind == 'zero':  # a 0 entry is skipped in the mean
    for i in present:
      areas[i] = int(rng.integers(1000, 80000))
    areas[present[0]] = 0
  else:
    v = int(rng.choice([16383, 16384, 16385, 65535, 65536, 65537]))
    for i in present:
      areas[i] = v
  return areas


def make_case(rng, ovis):
  n_cat = int(rng.integers(2, 5))
  cat_ids = sorted(rng.choice(np.arange(1, 10), n_cat, replace=False).tolist())
  categories = [{'id': c, 'name': f'cat{c}', 'supercategory': 'x'} for c in cat_ids]
  n_vid = int(rng.integers(2, 5))
  vid_ids = rng.choice(np.arange(1, 30), n_vid, replace=False).tolist()
  videos = []
  for v in vid_ids:
    r = rng.random()
    if r < .1:
      h, w = 140, 130
    elif r < .18:
      h, w = 270, 250
    else:
      h, w = [(40, 60), (64, 48)][int(rng.integers(0, 2))]
    L = int(rng.integers(3, 9))
    videos.append({'id': int(v), 'height': h, 'width': w, 'length': L,
                   'file_names': [f'{v}/{i:05d}.jpg' for i in range(L)]})

  annotations = []
  gt_masks = []  # (video, cat, masks per frame) for result generation
  next_id = 1
  zero_id_case = rng.random() < .05
  for vid in videos:
    h, w, L = vid['height'], vid['width'], vid['length']
    if rng.random() < .12:
      continue  # a video without annotations
    for _ in range(int(rng.integers(1, 6))):
      cat = int(rng.choice(cat_ids[:-1] if rng.random() < .3 else cat_ids))
      big = h >= 128 and rng.random() < .6
      style = rng.choice(['rect', 'blob', 'poly', 'rect20'], p=[.3, .3, .25, .15])
      if big and style == 'rect20':
        style = 'rect'
      present = rng.random(L) < .75
      if not present.any():
        present[int(rng.integers(0, L))] = True
      if not ovis and rng.random() < .02:
        present[:] = False  # track with no frame at all
      base_poly = None
      if style == 'poly':
        base_poly, base = random_polygon(rng, h, w)
      elif style == 'rect20':  # 20 rows: results covering k/20 of it hit IoU thresholds exactly
        base = np.zeros((h, w), np.uint8)
        y, x, rw = int(rng.integers(0, h - 19)), int(rng.integers(0, w - 10)), int(rng.integers(3, 10))
        base[y:y + 20, x:x + rw] = 1
      elif style == 'rect' or big:
        base = exact128_mask(rng, h, w) if (big and rng.random() < .35) else rect_mask(rng, h, w, big)
      else:
        base = blob_mask(rng, h, w)
      fmt = rng.choice(['crle', 'urle', 'poly', 'mix'])
      segs, masks = [], []
      dy, dx = int(rng.integers(-2, 3)), int(rng.integers(-2, 3))
      for f in range(L):
        if not present[f]:
          segs.append(None)
          masks.append(None)
          continue
        if style == 'poly' and fmt in ('poly', 'mix') and (fmt == 'poly' or rng.random() < .5):
          parts = [[min(max(p + (dx * f if j % 2 == 0 else dy * f), 0), w if j % 2 == 0 else h)
                    for j, p in enumerate(part)] for part in base_poly]
          m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(parts, h, w)))
          segs.append(parts)
        else:
          m = shift(base, dy * f, dx * f) if not (big or style == 'rect20') else base
          if rng.random() < .05:
            m = np.zeros_like(m)  # empty mask on a present frame
          ff = fmt if fmt in ('crle', 'urle') else rng.choice(['crle', 'urle'])
          segs.append(to_crle(m) if ff == 'crle' else to_urle(m))
        masks.append(m)
      areas = gen_areas(rng, masks)
      r = rng.random()
      iscrowd = 0 if r < .85 else (1 if r < .97 else (True if r < .985 else 0.5))
      ann = {'id': next_id, 'video_id': vid['id'], 'category_id': cat,
             'iscrowd': iscrowd, 'segmentations': segs, 'areas': areas,
             'bboxes': [None if m is None else [0, 0, 1, 1] for m in masks],
             'height': h, 'width': w, 'length': 1}
      if ovis:
        occ = [None if m is None else OCC[int(rng.integers(0, 3))] for m in masks]
        if all(o is None for o in occ):
          occ[0] = OCC[int(rng.integers(0, 3))]
        ann['occlusion'] = occ
      next_id += 1
      annotations.append(ann)
      gt_masks.append((vid, cat, masks, style))
      if rng.random() < .08:  # duplicate GT track: same masks, other areas / crowd flag
        dup = copy.deepcopy(ann)
        dup['id'] = next_id
        next_id += 1
        dup['areas'] = gen_areas(rng, masks)
        dup['iscrowd'] = int(rng.random() < .3)
        annotations.append(dup)
        if zero_id_case and rng.random() < .5:
          (dup if rng.random() < .5 else ann)['id'] = 0
          zero_id_case = False
  if zero_id_case and annotations:
    annotations[int(rng.integers(0, len(annotations)))]['id'] = 0
  rng.shuffle(annotations)

  # ---- results
  score_mode = rng.choice(['cont', 'quant', 'fewties'])

  def score():
    if score_mode == 'cont':
      return float(rng.random())
    if score_mode == 'quant':
      return float(rng.integers(1, 10)) / 10
    return float(rng.choice([0.3, 0.5, 0.5, 0.9]))

  def result_from(vid, cat, masks, strength, allow_len_change=True):
    h, w, L = vid['height'], vid['width'], vid['length']
    segs = []
    for f in range(L):
      m = masks[f] if f < len(masks) else None
      if m is None:
        if rng.random() < .15:  # FP frame
          segs.append(to_crle(blob_mask(rng, h, w)))
        else:
          segs.append(None)
        continue
      if rng.random() < .1:
        segs.append(None)  # missed frame
        continue
      pm = perturb(rng, m, strength)
      if rng.random() < .02:
        pm = pm.T.copy()  # mask of the wrong size
      segs.append(to_crle(pm))
    if not ovis and allow_len_change:
      r = rng.random()
      if r < .15:
        segs = segs[:int(rng.integers(1, L))]  # shorter than the GT
      elif r < .2:
        segs = segs + [to_crle(blob_mask(rng, h, w)) for _ in range(int(rng.integers(1, 3)))]
    if rng.random() < .02:
      segs = [None] * len(segs)  # all-null result
    c = cat
    r = rng.random()
    if r < .07:
      c = int(rng.choice(cat_ids))
    elif r < .1:
      c = 99  # category not in GT
    return {'video_id': vid['id'], 'category_id': c, 'score': score(),
            'segmentations': segs}

  results = []
  for vid, cat, masks, style in gt_masks:
    if style == 'rect20' and rng.random() < .7:  # IoU exactly k/20 (k = 10..20)
      k = int(rng.integers(10, 21))
      segs = []
      for m in masks:
        if m is None:
          segs.append(None)
          continue
        pm = m.copy()
        rows = np.flatnonzero(pm.any(1))
        if len(rows):
          pm[rows[0] + k:] = 0
        segs.append(to_crle(pm))
      results.append({'video_id': vid['id'], 'category_id': cat,
                      'score': score(), 'segmentations': segs})
    if rng.random() < .8:
      results.append(result_from(vid, cat, masks, float(rng.choice([0, .2, .5, 1, 1.5]))))
    if rng.random() < .25:  # duplicate
      results.append(result_from(vid, cat, masks, float(rng.choice([0, .3, 1]))))
  for _ in range(int(rng.integers(0, 6))):  # false positives
    vid = videos[int(rng.integers(0, len(videos)))]
    fake = [blob_mask(rng, vid['height'], vid['width']) if rng.random() < .7 else None
            for _ in range(vid['length'])]
    c = int(rng.choice(cat_ids + [99]))
    results.append(result_from(vid, c, fake, 0))
  if gt_masks and rng.random() < .12:  # > 100 results in one (video, category)
    vid, cat, masks, _ = gt_masks[int(rng.integers(0, len(gt_masks)))]
    for _ in range(int(rng.integers(101, 131))):
      r = result_from(vid, cat, masks, float(rng.choice([.5, 1, 2])), False)
      r['category_id'] = cat
      results.append(r)
  order = rng.permutation(len(results))
  results = [results[i] for i in order]
  gt = {'info': {}, 'videos': videos, 'categories': categories,
        'annotations': annotations}
  return gt, results


# ------------------------------------------------------------------ running


def run_official(gt, results, ovis):
  gt = copy.deepcopy(gt)
  results = copy.deepcopy(results)
  path = os.path.join(tempfile.gettempdir(), '_gt_ovis.json' if ovis else '_gt_ytvis.json')
  with open(path, 'w') as fh:
    json.dump(gt, fh)
  api, ev = (off_ovis.OVIS, off_oviseval.OVISeval) if ovis else (
      off_ytvos.YTVOS, off_ytvoseval.YTVOSeval)
  with contextlib.redirect_stdout(io.StringIO()):
    g = api(path)
    d = g.loadRes(results)
    e = ev(g, d, 'segm')
    e.evaluate()
    e.accumulate()
    e.summarize()
  prec, rec = e.eval['precision'], e.eval['recall']
  if not ovis:  # insert the occlusion axis to match ours
    prec, rec = prec[..., None, :], rec[..., None, :]
  return np.array(e.stats, np.float64), prec, rec


def run_ours(gt, results, ovis):
  ev = ours.run_evaluation(copy.deepcopy(gt), copy.deepcopy(results), ovis)
  keys = OVIS_KEYS if ovis else YTVIS_KEYS
  return np.array([ev.stats[k] for k in keys], np.float64), ev.precision, ev.recall


def compare(gt, results, ovis, empty=False):
  """-> (stat diffs array, max precision/recall array diff)."""
  # The official loadRes cannot take []: a result of a category outside the GT
  # is dropped by the official code, which gives the empty-results reference.
  off_res = results
  if empty:
    off_res = [{'video_id': gt['videos'][0]['id'], 'category_id': 12345,
                'score': .5, 'segmentations': [None]}]
  o_stats, o_p, o_r = run_official(gt, off_res, ovis)
  m_stats, m_p, m_r = run_ours(gt, results, ovis)
  arr = max(float(np.abs(o_p - m_p).max()), float(np.abs(o_r - m_r).max()))
  return np.abs(o_stats - m_stats), arr, o_stats, m_stats


def differs(gt, results, ovis):
  try:
    d, arr, _, _ = compare(gt, results, ovis)
  except Exception:
    return False
  return d.max() > TOL or arr > TOL


def shrink(gt, results, ovis):
  """Greedy removal of results, annotations, videos while the mismatch stays."""
  gt, results = copy.deepcopy(gt), copy.deepcopy(results)
  changed = True
  while changed:
    changed = False
    for i in range(len(results) - 1, -1, -1):
      if len(results) > 1:
        r2 = results[:i] + results[i + 1:]
        if differs(gt, r2, ovis):
          results, changed = r2, True
    for i in range(len(gt['annotations']) - 1, -1, -1):
      g2 = dict(gt, annotations=gt['annotations'][:i] + gt['annotations'][i + 1:])
      if differs(g2, results, ovis):
        gt, changed = g2, True
    used = {r['video_id'] for r in results}
    for i in range(len(gt['videos']) - 1, -1, -1):
      v = gt['videos'][i]['id']
      if v in used:
        continue
      g2 = dict(gt, videos=gt['videos'][:i] + gt['videos'][i + 1:],
                annotations=[a for a in gt['annotations'] if a['video_id'] != v])
      if differs(g2, results, ovis):
        gt, changed = g2, True
    used_c = {a['category_id'] for a in gt['annotations']} | {
        r['category_id'] for r in results}
    for i in range(len(gt['categories']) - 1, -1, -1):
      if gt['categories'][i]['id'] in used_c:
        continue
      g2 = dict(gt, categories=gt['categories'][:i] + gt['categories'][i + 1:])
      if differs(g2, results, ovis):
        gt, changed = g2, True
  return gt, results


def main(argv):
  del argv
  args = flags.FLAGS
  rng = np.random.default_rng(args.seed)
  t0 = time.time()
  n_fail = 0
  summary = {}
  for ovis, n in ((False, args.ytvis), (True, args.ovis)):
    name = 'OVIS' if ovis else 'YTVIS'
    keys = OVIS_KEYS if ovis else YTVIS_KEYS
    maxd = np.zeros(len(keys))
    max_arr = 0.0
    cnt = {'cases': 0, 'results': 0, 'gt_tracks': 0, 'over100': 0, 'skipped': 0,
           'mismatch': 0, 'empty': 0}
    t1 = time.time()
    for i in range(n + args.empty):
      empty = i >= n
      gt, results = make_case(rng, ovis)
      if empty:
        results = []
      empty = not results  # generated cases can also come out empty
      cnt['results'] += len(results)
      cnt['gt_tracks'] += len(gt['annotations'])
      per = {}
      for r in results:
        k = (r['video_id'], r['category_id'])
        per[k] = per.get(k, 0) + 1
      cnt['over100'] += any(v > 100 for v in per.values())
      try:
        d, arr, o_stats, m_stats = compare(gt, results, ovis, empty)
      except AssertionError as e:
        cnt['skipped'] += 1
        print(f'{name} case {i}: official assertion, skipped: {e}')
        continue
      cnt['cases'] += 1
      cnt['empty'] += empty
      maxd = np.maximum(maxd, d)
      max_arr = max(max_arr, arr)
      if d.max() > TOL or arr > TOL:
        cnt['mismatch'] += 1
        n_fail += 1
        bad = {k: (float(o), float(m)) for k, o, m, x in zip(keys, o_stats, m_stats, d) if x > TOL}
        print(f'{name} case {i}: MISMATCH stats {bad} array diff {arr:.3g}; shrinking...')
        sg, sr = (gt, results) if empty else shrink(gt, results, ovis)
        sd, sarr, so, sm = compare(sg, sr, ovis, empty)
        path = os.path.join(tempfile.gettempdir(), f'metric_parity_fail_{n_fail}.json')
        with open(path, 'w') as fh:
          json.dump({'metric': name, 'case': i, 'seed': args.seed,
                     'official_stats': dict(zip(keys, so.tolist())),
                     'ours_stats': dict(zip(keys, sm.tolist())),
                     'array_diff': sarr, 'gt': sg, 'results': sr,
                     'full_gt': gt, 'full_results': results}, fh)
        print(f'  saved {path} ({len(sr)} results, {len(sg["annotations"])} GT tracks)')
    print(f'\n{name}: {cnt["cases"]} cases compared ({cnt["empty"]} with empty results, '
          f'official run on a results list whose only entry is dropped), '
          f'{cnt["gt_tracks"]} GT tracks, {cnt["results"]} results, '
          f'{cnt["over100"]} cases with >100 results in one (video, category), '
          f'{cnt["skipped"]} skipped, {cnt["mismatch"]} mismatches, {time.time() - t1:.1f}s')
    print('  max |official - ours| per stat:')
    for k, v in zip(keys, maxd):
      print(f'    {k:6s} {v:.3g}')
    print(f'  max |diff| over full precision/recall arrays: {max_arr:.3g}')
    summary[name] = cnt
  print(f'\ntotal runtime {time.time() - t0:.1f}s; {n_fail} mismatching case(s)')
  return 1 if n_fail else 0


if __name__ == '__main__':
  app.run(main)
