"""TFDS records of a VIS dataset: array_record files, no TensorFlow needed.

``build(config)`` reads the configured dataset with its reader
(:func:`iai_jax.data.paths.reader`: YouTube-VIS / OVIS JSON by default) and
writes one record per video:

  video_id () int64, height () int32, width () int32,
  file_names (F,) bytes, frames (F,) bytes: the original JPEG files,
  track_id (K,) int64, label (K,) int32 (0-based class), iscrowd (K,) bool,
  rle (K*F,) bytes: compressed RLE counts of track k in frame f at index
    k*F + f, b'' where the track is absent.

Splits: ``train`` (training videos minus the held-out ones), ``heldout``
(``dataset.heldout_fraction`` of the training videos, chosen by
:func:`iai_jax.data.vis_json.heldout_split`; absent when the fraction is 0)
and ``valid`` (the official validation videos, frames only, when the
validation JSON exists).  Read back with :func:`open_split` (a random-access
``tfds.data_source``) and feed to :mod:`iai_jax.data.pipeline`.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from iai_jax.data import paths

VERSION = '1.0.0'


class RecordsMissingError(FileNotFoundError):
  pass


def video_example(video, frames_root: str) -> dict:
  """The record of one :class:`vis_json.Video`."""
  frames = []
  for name in video.file_names:
    with open(os.path.join(frames_root, name), 'rb') as f:
      frames.append(f.read())
  num_frames = len(video.file_names)
  rle = []
  for track in video.tracks:
    for seg in track.segmentations:
      counts = b'' if seg is None else seg['counts']
      rle.append(counts.encode() if isinstance(counts, str) else counts)
  assert len(rle) == len(video.tracks) * num_frames
  return {
      'video_id': np.int64(video.video_id),
      'height': np.int32(video.height),
      'width': np.int32(video.width),
      'file_names': np.asarray([n.encode() for n in video.file_names], object),
      'frames': np.asarray(frames, object),
      'track_id': np.asarray([t.track_id for t in video.tracks], np.int64),
      'label': np.asarray([t.label for t in video.tracks], np.int32),
      'iscrowd': np.asarray([t.iscrowd for t in video.tracks], bool),
      'rle': np.asarray(rle, object),
  }


@functools.cache
def _builder_class():
  import tensorflow_datasets as tfds

  class VisRecords(tfds.core.GeneratorBasedBuilder):
    """One record per video of a YouTube-VIS-format dataset."""
    VERSION = tfds.core.Version(VERSION)

    def __init__(self, *, splits: dict, **kwargs):
      self._iai_splits = splits
      super().__init__(**kwargs)

    def _info(self):
      t = tfds.features.Tensor
      return tfds.core.DatasetInfo(
          builder=self,
          description='YouTube-VIS-format videos: JPEG frames and RLE tracks.',
          features=tfds.features.FeaturesDict({
              'video_id': np.int64, 'height': np.int32, 'width': np.int32,
              'file_names': t(shape=(None,), dtype=np.object_),
              'frames': t(shape=(None,), dtype=np.object_),
              'track_id': t(shape=(None,), dtype=np.int64),
              'label': t(shape=(None,), dtype=np.int32),
              'iscrowd': t(shape=(None,), dtype=np.bool_),
              'rle': t(shape=(None,), dtype=np.object_),
          }))

    def _split_generators(self, dl_manager):
      return {name: self._generate_examples(videos, root)
              for name, (videos, root) in self._iai_splits.items()}

    def _generate_examples(self, videos, frames_root):
      for video in videos:
        yield int(video.video_id), video_example(video, frames_root)

  return VisRecords


def build(config, *, overwrite: bool = False, log=print) -> str:
  """Convert the configured dataset to array_record files; returns their dir."""
  import tensorflow_datasets as tfds

  from iai_jax.data import vis_json

  read = paths.reader(config).load_dataset
  ann, frames = paths.dataset_paths(config, 'train')
  train = read(ann, frames)
  d = config.dataset
  train_ids, heldout_ids = vis_json.heldout_split(train, d.heldout_fraction,
                                                  d.heldout_seed)
  by_id = {v.video_id: v for v in train.videos}
  splits = {'train': ([by_id[i] for i in train_ids], train.frames_root)}
  if heldout_ids:
    splits['heldout'] = ([by_id[i] for i in heldout_ids], train.frames_root)
  val_ann, val_frames = paths.dataset_paths(config, 'valid')
  if os.path.exists(val_ann):
    val = read(val_ann, val_frames)
    splits['valid'] = (val.videos, val.frames_root)
  log(f'building TFDS records of {d.name}: '
      + ', '.join(f'{k} {len(v[0])} videos' for k, v in splits.items()))
  builder = _builder_class()(
      splits=splits, data_dir=paths.records_dir(config),
      config=tfds.core.BuilderConfig(name=paths.builder_config_name(config)),
      file_format='array_record')
  if overwrite and os.path.isdir(builder.data_dir):
    import shutil
    shutil.rmtree(builder.data_dir)
  builder.download_and_prepare()
  log(f'records written to {builder.data_dir}')
  return builder.data_dir


def split_dir(config) -> str:
  return paths.split_dir(config, VERSION)


def open_split(config, split: str):
  """Random-access source of the records of ``split`` (train, heldout, valid)."""
  import tensorflow_datasets as tfds

  path = split_dir(config)
  if not os.path.exists(os.path.join(path, 'dataset_info.json')):
    raise RecordsMissingError(
        f'no TFDS records of dataset {config.dataset.name!r} in {path}. '
        'Build them with: python -m iai_jax.data.build --config=<your config>'
        ' (same --config.dataset.* overrides).')
  builder = tfds.builder_from_directory(path)
  if split not in builder.info.splits:
    raise RecordsMissingError(
        f'the records in {path} have no split {split!r} '
        f'(they have: {", ".join(builder.info.splits)})')
  return builder.as_data_source(split=split)


def ensure_records(config, log=print) -> str:
  """The TFDS records of the configured dataset, built first if missing.

  The synthetic dataset is generated when it is missing; a real dataset's
  annotations must exist, else :class:`iai_jax.data.paths.DatasetMissingError`
  says where they were looked for and how to get them or point the config
  at them.
  """
  path = split_dir(config)
  if os.path.exists(os.path.join(path, 'dataset_info.json')):
    return path
  paths.ensure_annotations(config, log=log)
  log(f'no TFDS records in {path}: building them (once)')
  build(config, log=log)
  return path
