"""Dataset checker: reports everything wrong with a VIS dataset, and its stats.

  python -m iai_jax.data.check --config=configs/ytvis19.py [--split=valid]

Problems it finds (all of them, not only the first): an unreadable or
malformed JSON, missing frame files, masks whose size is not the video's,
undecodable masks, per-frame lists whose length is not the frame count,
unknown category ids, annotations of unknown videos, and videos with more
(non-crowd) instances than the model can give IDs to (``max_obj_num - 2``).
Statistics: videos, frames, instances per video, class histogram. Exit code 1
when there are problems.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys

import numpy as np

from iai_jax.data import vis_json


@dataclasses.dataclass
class Report:
  problems: list[str]
  stats: dict

  @property
  def ok(self) -> bool:
    return not self.problems

  def format(self, limit: int = 50) -> str:
    lines = ['dataset statistics:']
    for k, v in self.stats.items():
      if k == 'class_histogram':
        lines.append('  instances per class:')
        for name, n in v.items():
          lines.append(f'    {name:<24} {n}')
      else:
        lines.append(f'  {k:<24} {v}')
    if self.ok:
      lines.append('no problems found')
    else:
      lines.append(f'{len(self.problems)} problems:')
      lines += [f'  - {p}' for p in self.problems[:limit]]
      if len(self.problems) > limit:
        lines.append(f'  ... and {len(self.problems) - limit} more')
    return '\n'.join(lines)


def check_dataset(ann_path: str, frames_root: str,
                  max_instances: int | None = None) -> Report:
  """Checks one annotation file and its frames; never raises on bad data."""
  problems: list[str] = []
  try:
    data = vis_json.read_json(ann_path)
  except vis_json.VisDataError as e:
    return Report([str(e)], {})
  if not isinstance(data, dict) or not isinstance(data.get('videos'), list) \
      or not isinstance(data.get('categories'), list):
    return Report([f'{ann_path}: not a YouTube-VIS / OVIS annotation file '
                   '(needs "videos" and "categories" lists)'], {})
  if not os.path.isdir(frames_root):
    problems.append(f'frame folder {frames_root} does not exist')
  cats = {c.get('id'): str(c.get('name', c.get('id')))
          for c in data['categories'] if isinstance(c, dict)}
  videos = {}
  for i, v in enumerate(data['videos']):
    if not isinstance(v, dict) or 'id' not in v:
      problems.append(f'videos[{i}] has no "id"')
      continue
    names = v.get('file_names') or []
    if not names:
      problems.append(f'video {v["id"]}: no file_names')
    videos[v['id']] = v
    if os.path.isdir(frames_root):
      missing = [n for n in names
                 if not os.path.exists(os.path.join(frames_root, n))]
      if missing:
        problems.append(f'video {v["id"]}: {len(missing)} of {len(names)} '
                        f'frame files missing, e.g. '
                        f'{os.path.join(frames_root, missing[0])}')
  per_video = collections.Counter()
  classes = collections.Counter()
  for i, a in enumerate(data.get('annotations') or []):
    where = f'annotation {a.get("id", i)}'
    vid = a.get('video_id')
    if vid not in videos:
      problems.append(f'{where}: video_id {vid} is not a video of the file')
      continue
    v = videos[vid]
    n = len(v.get('file_names') or [])
    if a.get('category_id') not in cats:
      problems.append(f'{where} (video {vid}): unknown category_id '
                      f'{a.get("category_id")}')
    else:
      classes[cats[a['category_id']]] += 1
    for key in ('segmentations', 'bboxes', 'areas', 'occlusion'):
      if isinstance(a.get(key), list) and len(a[key]) != n:
        problems.append(f'{where} (video {vid}): {key} has {len(a[key])} '
                        f'entries, the video has {n} frames')
    h, w = v.get('height'), v.get('width')
    for f, seg in enumerate(a.get('segmentations') or []):
      if seg is None:
        continue
      if isinstance(seg, dict) and 'size' in seg and list(seg['size']) != [h, w]:
        problems.append(f'{where} (video {vid}) frame {f}: mask size '
                        f'{list(seg["size"])}, the video is [{h}, {w}]')
        break
      try:
        vis_json.to_rle(seg, h, w, f'{where} frame {f}')
      except vis_json.VisDataError as e:
        problems.append(str(e))
        break
    if not a.get('iscrowd', 0):
      per_video[vid] += 1
  if max_instances is not None:
    for vid, k in sorted(per_video.items()):
      if k > max_instances:
        problems.append(f'video {vid}: {k} instances, more than the '
                        f'{max_instances} IDs the model can issue '
                        '(model.max_obj_num - 2); the extra ones are ignored '
                        'in training and cannot be tracked')
  counts = np.array([per_video.get(v, 0) for v in videos] or [0])
  stats = {
      'videos': len(videos),
      'frames': sum(len(v.get('file_names') or []) for v in videos.values()),
      'instances': int(counts.sum()),
      'instances per video (min/mean/max)':
          f'{counts.min()}/{counts.mean():.2f}/{counts.max()}',
      'class_histogram': {name: classes.get(name, 0)
                          for name in sorted(set(cats.values()))},
  }
  return Report(problems, stats)


def check_config(config, split: str = 'train') -> Report:
  from iai_jax.data import tfds_builder
  ann, frames = tfds_builder.dataset_paths(config, split)
  return check_dataset(ann, frames, config.model.max_obj_num - 2)


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    raise app.UsageError('--config is required')
  report = check_config(config, _SPLIT.value)
  print(report.format())
  sys.exit(0 if report.ok else 1)


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'configs/*.py')
  _SPLIT = flags.DEFINE_enum('split', 'train', ['train', 'valid'], 'Split.')
  app.run(main)
