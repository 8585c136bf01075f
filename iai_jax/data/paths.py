"""Where a config's dataset lives: annotations, frames, records, categories.

The one owner of a dataset's location on disk (every other module asks
here):

* :func:`dataset_paths`: the annotation file and the frame folder of a
  split (``dataset.root`` plus ``dataset.train_json`` / ``train_frames`` /
  ``val_json`` / ``val_frames``; absolute paths are used as they are);
* :func:`records_dir` / :func:`split_dir`: where the TFDS array_record
  files are written and read;
* :func:`ensure_annotations`: the training annotations, generated first for
  the built-in synthetic dataset (``dataset.synthetic.num_videos > 0``),
  else a :class:`DatasetMissingError` that says where they were looked for;
* :func:`categories`: the dataset's (category id, name) in label order,
  read by the dataset's reader (:func:`reader`).

The reader is chosen by ``dataset.format``: ``iai_jax.data.<format>`` (or
else a module of that name), which provides
``load_dataset(ann_path, frames_root) -> vis_json.VisDataset`` and
``load_categories(ann_path) -> [(id, name)]``. ``vis_json`` (YouTube-VIS
2019/2021/2022 and OVIS) is the one there is; a new annotation format is one
new module.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


class DatasetMissingError(FileNotFoundError):
  """The configured dataset is not where the config says."""


def _path(root: str, p: str) -> str:
  return p if os.path.isabs(p) else os.path.join(root, p)


def dataset_paths(config, split: str) -> tuple[str, str]:
  """(annotation file, frames root) of 'train' or 'valid'."""
  d = config.dataset
  if split == 'valid':
    return _path(d.root, d.val_json), _path(d.root, d.val_frames)
  return _path(d.root, d.train_json), _path(d.root, d.train_frames)


def records_dir(config) -> str:
  return config.dataset.tfds_dir or os.path.join(config.dataset.root, 'tfds')


def builder_config_name(config) -> str:
  d = config.dataset
  return f'{d.name}-heldout{d.heldout_fraction:g}-seed{d.heldout_seed}'


def split_dir(config, version: str) -> str:
  return os.path.join(records_dir(config), 'vis_records',
                      builder_config_name(config), version)


def reader(config) -> ModuleType:
  """The annotation reader module of ``dataset.format``."""
  name = config.dataset.format
  module = None
  for path in (f'iai_jax.data.{name}', name):
    try:
      module = importlib.import_module(path)
      break
    except ModuleNotFoundError as e:
      if e.name != path:
        raise
  if module is None:
    raise ValueError(f'dataset.format={name!r}: no reader module '
                     f'iai_jax.data.{name} or {name}; the one there is: '
                     'vis_json')
  for fn in ('load_dataset', 'load_categories'):
    if not hasattr(module, fn):
      raise ValueError(f'dataset.format={name!r}: {path} has no {fn}()')
  return module


def ensure_annotations(config, log=print) -> str:
  """The training annotation file, generated first for the synthetic data.

  Raises :class:`DatasetMissingError` (where it looked, how to fix it) when
  a real dataset's annotations or frames are missing.
  """
  ann, frames = dataset_paths(config, 'train')
  s = config.dataset.synthetic
  if s.num_videos > 0 and not os.path.exists(ann):
    from iai_jax.data import synthetic
    root = os.path.dirname(ann)
    log(f'generating the synthetic dataset ({s.num_videos} videos of '
        f'{s.num_frames} frames, {s.height}x{s.width}, occlusion '
        f'{s.occlusion}) in {os.path.abspath(root)}')
    synthetic.generate(root, s.num_videos, s.num_frames, s.height, s.width,
                       s.max_instances, s.occlusion, s.seed,
                       ann_name=os.path.relpath(ann, root),
                       frames_dir=os.path.relpath(frames, root), kind=s.kind)
  if not os.path.exists(ann) or not os.path.isdir(frames):
    missing = ann if not os.path.exists(ann) else frames
    raise DatasetMissingError(
        f'dataset {config.dataset.name!r} not found: {os.path.abspath(missing)} '
        'does not exist. Download it (see data/README.md for where to get '
        'YouTube-VIS / OVIS and the folder layout), or point the config at '
        'it: --config.dataset.root=/path/to/dataset (and, if the file names '
        'differ, --config.dataset.train_json=... '
        '--config.dataset.train_frames=...). To try IAI without a download, '
        'use --config=configs/synthetic.py.')
  return ann


def categories(config) -> list[tuple[int, str]]:
  """[(category id, name)] in label order, from the training annotations;
  placeholders ('class k', ids 1..P) when they are not on this machine."""
  ann, _ = dataset_paths(config, 'train')
  if not os.path.exists(ann):
    return [(k + 1, f'class {k}') for k in range(config.model.num_classes)]
  return list(reader(config).load_categories(ann))
