"""What the ID head does when an object comes back after a gap.

  python scripts/reid_diagnose.py --run=/work/runs/ablate_reid/reid/full \
      [--variant=full] [--config=configs/synthetic.py:reid]

Runs the held-out videos of the re-identification split through
``OnlineSegmenter`` with the run's last checkpoint and, for every frame at
which a ground-truth object is detected (a kept detection with mask IoU >=
0.5) and had been detected before, records the ID head's view of it:

* ``p_old``: the probability of the ID the object held when last detected;
* ``p_best_other``: the highest probability among the other issued IDs;
* ``p_unissued``: the highest probability among the slots not issued yet
  (the Hungarian matcher gives a new ID when it picks one of those);
* the outcome: ``kept`` (the old ID again), ``new`` (a new ID issued) or
  ``other`` (another object's ID).

The rows are grouped by the number of frames since the object was last
detected (0: it was detected in the previous frame), the quantity the
global memory exists for. With ``--variant`` the memory branches are
switched as in ``scripts/ablate.py`` (the run must have been trained so).
Prints a table and writes it, with the raw rows, to RUN/reid_diagnose.json.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ablate  # noqa: E402  (its config loading; its flags, --set too)

def define_flags():
  """The command-line flags; defined only when the script runs, so that a
  test can import its functions beside other scripts with a --run flag."""
  flags.DEFINE_string('run', None, 'Training run (workdir) to restore.',
                      required=True)
  flags.DEFINE_string('config', 'configs/synthetic.py:reid',
                      'Config file[:variants] the run was trained with.')
  flags.DEFINE_enum('variant', 'full',
                    ['full', 'no_global', 'no_local', 'no_assoc'],
                    'Memory switches (as scripts/ablate.py).')


BUCKETS = ((0, 0), (1, 2), (3, 5), (6, 10), (11, 15), (16, 10**9))


def bucket(gap: int) -> str:
  for lo, hi in BUCKETS:
    if lo <= gap <= hi:
      return str(lo) if lo == hi else (f'{lo}+' if hi >= 10**9
                                       else f'{lo}-{hi}')
  raise ValueError(gap)


def gt_masks(ann: dict, frame: int, h: int, w: int):
  from pycocotools import mask as mask_utils
  seg = ann['segmentations'][frame]
  if not seg:
    return None
  if isinstance(seg.get('counts'), list):
    seg = mask_utils.frPyObjects(seg, h, w)
  m = mask_utils.decode(seg).astype(bool)
  return m if m.any() else None


def diagnose_video(segmenter, frames, anns, h, w, num_ids):
  rows = []
  last = {}  # annotation id -> (frame, ID)
  for f, frame in enumerate(frames):
    instances = segmenter.step(frame)
    host = segmenter.last_detections
    issued_before = segmenter._tracker.num_issued
    prev_issued = getattr(segmenter, '_diag_issued', 0)
    segmenter._diag_issued = issued_before
    by_id = {inst['id']: inst for inst in instances}
    # the kept detections' rows in the ID-probability table, by ID
    ids = np.full((host['id_prob'].shape[0],), -1)
    order = np.flatnonzero(host['valid'])
    for r, inst in zip(order, instances):
      ids[r] = inst['id']
    for ann in anns:
      gm = gt_masks(ann, f, h, w)
      if gm is None:
        continue
      best, best_iou = None, 0.5
      for i, inst in by_id.items():
        inter = np.logical_and(gm, inst['mask']).sum()
        union = np.logical_or(gm, inst['mask']).sum()
        iou = inter / union if union else 0.0
        if iou >= best_iou:
          best, best_iou = i, iou
      if best is None:
        continue
      if ann['id'] in last:
        lf, old = last[ann['id']]
        row = int(np.flatnonzero(ids == best)[0])
        p = np.asarray(host['id_prob'][row], np.float64)
        others = [k for k in range(prev_issued) if k != old]
        rows.append({
            'gap': f - lf - 1,
            'p_old': float(p[old]),
            'p_best_other': float(max((p[k] for k in others), default=0.0)),
            'p_unissued': float(p[prev_issued:num_ids].max()
                                if prev_issued < num_ids else 0.0),
            'outcome': ('kept' if best == old else
                        'new' if best >= prev_issued else 'other'),
        })
      last[ann['id']] = (f, best)
  return rows


def summarise(rows) -> dict:
  out = {}
  for lo, hi in BUCKETS:
    sel = [r for r in rows if lo <= r['gap'] <= hi]
    if not sel:
      continue
    n = len(sel)
    out[bucket(lo)] = {
        'n': n,
        'kept': sum(r['outcome'] == 'kept' for r in sel) / n,
        'new': sum(r['outcome'] == 'new' for r in sel) / n,
        'other': sum(r['outcome'] == 'other' for r in sel) / n,
        'p_old_median': float(np.median([r['p_old'] for r in sel])),
        'p_best_other_median': float(np.median([r['p_best_other']
                                                for r in sel])),
        'p_unissued_median': float(np.median([r['p_unissued'] for r in sel])),
        'old_is_top': sum(r['p_old'] >= max(r['p_best_other'],
                                            r['p_unissued'])
                          for r in sel) / n,
    }
  return out


def table(summary: dict) -> str:
  lines = ['| frames since last detected | n | kept | new ID | other ID | '
           'median p(old ID) | median p(best other) | median p(unissued) | '
           'old ID ranked first |',
           '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  for b, s in summary.items():
    lines.append(
        f'| {b} | {s["n"]} | {100 * s["kept"]:.1f} | {100 * s["new"]:.1f} | '
        f'{100 * s["other"]:.1f} | {s["p_old_median"]:.3f} | '
        f'{s["p_best_other_median"]:.3f} | {s["p_unissued_median"]:.3f} | '
        f'{100 * s["old_is_top"]:.1f} |')
  return '\n'.join(lines)


def main(argv):
  del argv
  from iai_jax import checkpoints, eval_split, inference
  from iai_jax.data import paths, pipeline, tfds_builder
  config = ablate.variant_config(
      ablate.load_config(flags.FLAGS.config, flags.FLAGS.set),
      flags.FLAGS.variant)
  variables = checkpoints.restore_variables(config, flags.FLAGS.run)
  tfds_builder.ensure_records(config)
  source = tfds_builder.open_split(config, 'heldout')
  records = [source[i] for i in range(len(source))]
  gt = eval_split.heldout_ground_truth(
      config, [int(r['video_id']) for r in records])
  segmenter = inference.OnlineSegmenter(
      config, variables, [c for c, _ in paths.categories(config)])
  rows = []
  for r in records:
    vid = int(r['video_id'])
    anns = [a for a in gt['annotations'] if a['video_id'] == vid
            and not a.get('iscrowd')]
    frames = [pipeline.decode_jpeg(f) for f in r['frames']]
    segmenter.reset()
    segmenter._diag_issued = 0
    rows += diagnose_video(segmenter, frames, anns, int(r['height']),
                           int(r['width']), config.model.max_obj_num)
    segmenter.finish()
  summary = summarise(rows)
  text = table(summary)
  print(text)
  out = os.path.join(flags.FLAGS.run,
                     f'reid_diagnose_{flags.FLAGS.variant}.json')
  with open(out, 'w') as f:
    json.dump({'summary': summary, 'rows': rows}, f, indent=1)
  return 0


if __name__ == '__main__':
  define_flags()
  app.run(main)
