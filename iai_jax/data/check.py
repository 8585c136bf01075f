"""Dataset checker: reports everything wrong with a VIS dataset, and its stats.

  python -m iai_jax.data.check --config=configs/ytvis19.py [--split=valid]
      [--config.dataset.root=/datasets/ytvis19]

Problems it finds (all of them, not only the first): an unreadable or
malformed JSON, malformed videos / annotations / categories, missing frame
files, frames that do not decode (every frame is decoded, with a progress
bar) or whose size is not the video's, masks whose size is not the video's, undecodable masks, per-frame
lists whose length is not the frame count, unknown category ids,
annotations of unknown videos, and videos with more (non-crowd) instances
than the model can give IDs to: the tracker issues IDs 0..N-3 of the
``N = model.max_obj_num`` slots (design card section 5, "IDs stop being
issued at N-2"), so ``max_obj_num - 2`` instances a video.
Statistics: videos, frames, instances per video (min / mean / max), crowd
regions and the class histogram by name. Exit code 1 when there are
problems.

From Python: ``check_dataset(ann_path, frames_root, max_instances)`` returns a
:class:`Report` (``.problems``, ``.stats``, ``.ok``, ``.format()``).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys

import numpy as np

from iai_jax.data import vis_json
from iai_jax.validate import is_int


@dataclasses.dataclass
class Report:
  problems: list[str]
  stats: dict

  @property
  def ok(self) -> bool:
    return not self.problems

  def format(self, limit: int = 50) -> str:
    lines = ['dataset statistics:'] if self.stats else []
    for k, v in self.stats.items():
      if k == 'class_histogram':
        lines.append('  instances per class:')
        for name, n in v.items():
          lines.append(f'    {name:<24} {n}')
      else:
        lines.append(f'  {k:<36} {v}')
    if self.ok:
      lines.append('no problems found')
    else:
      n = len(self.problems)
      lines.append(f'{n} problem{"s" if n > 1 else ""}:')
      lines += [f'  - {p}' for p in self.problems[:limit]]
      if len(self.problems) > limit:
        lines.append(f'  ... and {len(self.problems) - limit} more')
    return '\n'.join(lines)


def read_frame_size(path: str) -> tuple[int, int]:
  """(height, width) of an image file, decoded in full (a truncated or
  corrupt JPEG fails here, not in the middle of training); OSError /
  ValueError when it does not decode."""
  from PIL import Image
  with Image.open(path) as im:
    im.load()
    return im.height, im.width


def _frame_problems(vid, v, frames_root, paths, progress) -> list[str]:
  """Every frame of a video decoded; its size checked against the JSON."""
  h, w = v['height'], v['width']
  unreadable, wrong = [], []
  for name, path in paths:
    try:
      size = read_frame_size(path)
    except (OSError, ValueError, SyntaxError) as e:  # PIL's decode errors
      unreadable.append((name, f'{type(e).__name__}: {e}'))
    else:
      if is_int(h) and is_int(w) and size != (h, w):
        wrong.append((name, size))
    progress(1)
  problems = []
  if unreadable:
    problems.append(
        f'video {vid}: {len(unreadable)} of {len(paths)} frames do not decode '
        f'as images, e.g. {os.path.join(frames_root, unreadable[0][0])} '
        f'({unreadable[0][1]})'
        + ''.join(f', {os.path.join(frames_root, n)}'
                  for n, _ in unreadable[1:3])
        + (', ...' if len(unreadable) > 3 else '')
        + '; extract the frames again from the source video or replace the '
        'files')
  if wrong:
    (name, (fh, fw)) = wrong[0]
    problems.append(
        f'video {vid}: {len(wrong)} of {len(paths)} frames are not the '
        f'{w}x{h} (width x height) the JSON says, e.g. '
        f'{os.path.join(frames_root, name)} is {fw}x{fh}; fix the video\'s '
        '"height" / "width" or resize the frames')
  return problems


def _check_videos(data, frames_root, problems, decode_frames=True) -> dict:
  """Valid videos by id; problems appended for the others. With
  ``decode_frames`` every frame file is decoded and its size checked."""
  have_frames = os.path.isdir(frames_root)
  videos, to_decode = {}, []
  for i, v in enumerate(data['videos']):
    if not isinstance(v, dict) or not is_int(v.get('id')):
      problems.append(f'videos[{i}] has no integer "id"')
      continue
    vid = v['id']
    if vid in videos:
      problems.append(f'video {vid}: the id appears twice in "videos"')
      continue
    h, w = v.get('height'), v.get('width')
    if not (is_int(h) and is_int(w) and h > 0 and w > 0):
      problems.append(f'video {vid}: height / width missing or not positive '
                      f'integers ({h!r}, {w!r})')
    names = v.get('file_names')
    if not isinstance(names, list) or not names:
      problems.append(f'video {vid}: no "file_names" list')
      names = []
    elif not all(isinstance(n, str) for n in names):
      problems.append(f'video {vid}: "file_names" holds non-strings')
      names = [n for n in names if isinstance(n, str)]
    length = v.get('length')
    if is_int(length) and names and length != len(names):
      problems.append(f'video {vid}: length {length}, but {len(names)} '
                      'file_names')
    videos[vid] = dict(v, file_names=names, height=h, width=w)
    if have_frames:
      present = [(n, os.path.join(frames_root, n)) for n in names]
      missing = [p for _, p in present if not os.path.isfile(p)]
      if missing:
        problems.append(f'video {vid}: {len(missing)} of {len(names)} frame '
                        'files missing: ' + ', '.join(missing[:3])
                        + (', ...' if len(missing) > 3 else ''))
      present = [(n, p) for n, p in present if os.path.isfile(p)]
      if decode_frames and present:
        to_decode.append((vid, present))
  if to_decode:
    from tqdm import tqdm
    total = sum(len(p) for _, p in to_decode)
    with tqdm(total=total, unit='frame', desc='decoding frames',
              dynamic_ncols=True, mininterval=1.0, file=sys.stderr) as bar:
      for vid, present in to_decode:
        problems += _frame_problems(vid, videos[vid], frames_root, present,
                                    bar.update)
  return videos


def _check_masks(a, v, where, problems) -> None:
  """Mask sizes and decodability; one problem per annotation at most."""
  h, w = v['height'], v['width']
  if not (is_int(h) and is_int(w)):
    return  # already reported with the video
  for f, seg in enumerate(a['segmentations']):
    if isinstance(seg, dict) and 'size' in seg and (
        not isinstance(seg['size'], list) or list(seg['size']) != [h, w]):
      problems.append(f'{where} frame {f}: mask size {seg["size"]!r}, the '
                      f'video is [{h}, {w}]')
      return
  try:
    vis_json.annotation_masks(a['segmentations'], h, w, where)
  except vis_json.VisDataError as e:
    problems.append(str(e))


def check_dataset(ann_path: str, frames_root: str,
                  max_instances: int | None = None,
                  decode_frames: bool = True) -> Report:
  """Checks one annotation file and its frames; never raises on bad data.

  ``max_instances``: the most non-crowd instances a video may have (the
  config's ``model.max_obj_num - 2``); None: not checked.
  ``decode_frames``: decode every frame file (with a progress bar on
  stderr) and check its size against the JSON's height and width.
  """
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
    problems.append(f'frame folder {os.path.abspath(frames_root)} does not '
                    'exist (set --config.dataset.root / '
                    'dataset.train_frames / dataset.val_frames)')
  cats = {}
  for i, c in enumerate(data['categories']):
    if not isinstance(c, dict) or not is_int(c.get('id')):
      problems.append(f'categories[{i}] has no integer "id"')
    elif c['id'] in cats:
      problems.append(f'category id {c["id"]} appears twice')
    else:
      cats[c['id']] = str(c.get('name', c['id']))
  videos = _check_videos(data, frames_root, problems, decode_frames)

  annotations = data.get('annotations')
  if annotations is None:
    annotations = []
  elif not isinstance(annotations, list):
    problems.append('"annotations" is not a list')
    annotations = []
  per_video = collections.Counter()
  classes = collections.Counter()
  crowd = 0
  for i, a in enumerate(annotations):
    if not isinstance(a, dict):
      problems.append(f'annotations[{i}] is not an object')
      continue
    vid = a.get('video_id')
    where = f'annotation {a.get("id", f"#{i}")} (video {vid})'
    if not is_int(vid) or vid not in videos:
      problems.append(f'{where}: video_id {vid} is not a video of the file')
      continue
    v = videos[vid]
    n = len(v['file_names'])
    if not is_int(a.get('category_id')) or a['category_id'] not in cats:
      problems.append(f'{where}: unknown category_id {a.get("category_id")} '
                      f'(known: {sorted(cats)})')
    else:
      classes[cats[a['category_id']]] += 1
    if not isinstance(a.get('segmentations'), list):
      problems.append(f'{where}: no "segmentations" list (one entry per '
                      'frame, null where absent)')
    for key in ('segmentations', 'bboxes', 'areas', 'occlusion'):
      if isinstance(a.get(key), list) and len(a[key]) != n:
        problems.append(f'{where}: {key} has {len(a[key])} entries, the '
                        f'video has {n} frames')
    bad_occ = [o for o in a.get('occlusion') or [] if o is not None
               and o not in vis_json.OCCLUSION_LEVELS]
    if bad_occ:
      problems.append(f'{where}: occlusion value {bad_occ[0]!r} is not one '
                      f'of {", ".join(vis_json.OCCLUSION_LEVELS)} or null')
    if isinstance(a.get('segmentations'), list):
      _check_masks(a, v, where, problems)
    if a.get('iscrowd', 0):
      crowd += 1
    else:
      per_video[vid] += 1
  if max_instances is not None:
    for vid, k in sorted(per_video.items()):
      if k > max_instances:
        problems.append(f'video {vid}: {k} instances, more than the '
                        f'{max_instances} IDs the model can issue '
                        '(model.max_obj_num - 2); the extra ones are ignored '
                        'in training and cannot be tracked. Raise '
                        '--config.model.max_obj_num or drop the video.')
  counts = np.array([per_video.get(v, 0) for v in videos] or [0])
  stats = {
      'videos': len(videos),
      'frames': sum(len(v['file_names']) for v in videos.values()),
      'instances': int(counts.sum()),
      'instances per video (min/mean/max)':
          f'{counts.min()}/{counts.mean():.2f}/{counts.max()}',
      'crowd regions': crowd,
      'categories': len(cats),
      'class_histogram': {name: classes.get(name, 0)  # category id order
                          for name in dict.fromkeys(cats[c]
                                                    for c in sorted(cats))},
  }
  return Report(problems, stats)


def check_configured_dataset(config, split: str = 'train', log=print) -> Report:
  """Checks the dataset a config points at (``split``: train or valid)."""
  from iai_jax.data import paths
  if split == 'train' and config.dataset.synthetic.num_videos > 0:
    paths.ensure_annotations(config, log=log)
  ann, frames = paths.dataset_paths(config, split)
  log(f'checking {os.path.abspath(ann)} with frames under '
      f'{os.path.abspath(frames)}')
  return check_dataset(ann, frames, config.model.max_obj_num - 2)


def main(argv):
  from absl import app

  from iai_jax import cli
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  config = cli.config(_CONFIG)
  report = check_configured_dataset(config, _SPLIT.value)
  print(report.format())
  sys.exit(0 if report.ok else 1)


if __name__ == '__main__':
  # The flags live here so that importing the module defines none.
  from absl import flags

  from iai_jax import cli
  _CONFIG = cli.define_config_flag()
  _SPLIT = flags.DEFINE_enum('split', 'train', ['train', 'valid'],
                             'Which annotation file to check.')
  cli.run(main)
