"""The grain clip pipeline: static-shape training batches from TFDS records.

One record is one video (see :mod:`iai_jax.data.tfds_builder`). A training
example is a clip of ``train.clip_len`` frames of one video:

* frames: a random start, then ``clip_len - 1`` random strides in
  1..``train.max_stride``; the start is drawn so that the clip fits the video,
  and a video shorter than the clip repeats its last frame;
* the same augmentation for every frame of the clip: resize keeping the ratio
  (shorter side to ``input.size[0]`` or a random choice of
  ``input.train_short_sides``, longer side at most ``input.size[1]`` /
  ``input.train_max_long``), a random horizontal flip, padding to one fixed
  bucket;
* instances: the non-crowd tracks visible in the clip, renumbered 0..K-1 in
  the order they first appear (K capped at ``max_obj_num - 1``; the others
  become ignore regions), padded to ``max_obj_num``.

Everything an instance needs is carried by one ``id_map`` per frame (uint8,
input resolution): the clip-instance number covering the pixel (a pixel
covered by several instances belongs to the smallest), ``IGNORE`` for crowd
regions and dropped instances, ``BACKGROUND`` elsewhere (padding included).
Masks, the one-hot ID mask of the memory and the stride-4 mask targets are all
derived from it on the device, so a clip costs ~1 MB instead of one
full-resolution mask per instance.

Batch (per clip; the batch stacks clips in front):
  image (T, H, W, 3) uint8 RGB, not normalised
  id_map (T, H, W) uint8
  label (M,) int32 class of each clip instance, -1 for padding
  box (T, M, 4) float32 x1, y1, x2, y2 (x2, y2 exclusive) of the visible mask
  present (T, M) bool
  id_target (T, M) int32: k if instance k was seen in an earlier frame of the
    clip, N-1 ("new") in the frame it first appears, -1 where absent
  new_instance (T,) bool: some instance first appears in this frame
  image_size (2,) int32: the resized, unpadded (h, w)
  video_id () int32, frame_index (T,) int32
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from iai_jax import config_lib

BACKGROUND = 255
IGNORE = 254


def bucket_size(config) -> tuple[int, int]:
  """The fixed padded (H, W) every training clip is padded to."""
  i = config.input
  short = max(i.train_short_sides) if i.train_short_sides else i.size[0]
  long = i.train_max_long if i.train_short_sides else i.size[1]
  return config_lib.padded_size(short, long, i.size_divisor)


def sample_clip_indices(num_frames: int, clip_len: int, max_stride: int,
                        rng: np.random.Generator) -> np.ndarray:
  """Frame indices of one clip (see the module docstring)."""
  strides = rng.integers(1, max_stride + 1, size=clip_len - 1)
  span = int(strides.sum())
  start = int(rng.integers(0, max(num_frames - span, 1)))
  idx = start + np.concatenate([[0], np.cumsum(strides)])
  return np.minimum(idx, num_frames - 1).astype(np.int32)


def resized_size(h: int, w: int, short: int, long: int,
                 bucket: tuple[int, int]) -> tuple[int, int]:
  scale = min(short / min(h, w), long / max(h, w))
  nh, nw = h * scale, w * scale
  fit = min(bucket[0] / nh, bucket[1] / nw, 1.0)  # portrait videos
  return max(1, int(round(nh * fit))), max(1, int(round(nw * fit)))


def decode_jpeg(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert('RGB'))


def _decode_rle(counts: bytes, h: int, w: int) -> np.ndarray | None:
  if not counts:
    return None
  return mask_utils.decode({'size': [h, w], 'counts': counts}).astype(bool)


def paint_id_map(masks: list, crowd: np.ndarray | None, h: int, w: int
                 ) -> np.ndarray:
  """One frame's id_map: masks[k] (bool (h, w) or None) -> uint8 map.

  Larger instances are painted first, so a pixel shared by several instances
  ends with the smallest; crowd pixels not covered by an instance -> IGNORE.
  """
  out = np.full((h, w), BACKGROUND, np.uint8)
  if crowd is not None:
    out[crowd] = IGNORE
  areas = [(-(m.sum()) if m is not None else 0, k) for k, m in enumerate(masks)]
  for _, k in sorted(areas):
    m = masks[k]
    if m is not None:
      out[m] = k if k < IGNORE else IGNORE
  return out


def clip_targets(id_map: np.ndarray, max_obj_num: int):
  """Boxes, presence and ID targets from (T, H, W) id_maps."""
  t_len = id_map.shape[0]
  m = max_obj_num
  box = np.zeros((t_len, m, 4), np.float32)
  present = np.zeros((t_len, m), bool)
  for t in range(t_len):
    for k in np.unique(id_map[t]):
      if k >= m:
        continue
      ys, xs = np.nonzero(id_map[t] == k)
      present[t, k] = True
      box[t, k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
  seen_before = np.cumsum(present, axis=0) - present > 0
  id_target = np.where(present, np.where(seen_before, np.arange(m)[None],
                                          m - 1), -1).astype(np.int32)
  new_instance = (present & ~seen_before).any(axis=1)
  return box, present, id_target, new_instance


def make_training_clip(record: dict, rng: np.random.Generator, config
                       ) -> dict[str, Any]:
  """One augmented, padded training clip from one video record."""
  t_len = config.train.clip_len
  n_ids = config.model.max_obj_num
  h, w = int(record['height']), int(record['width'])
  num_frames = len(record['frames'])
  idx = sample_clip_indices(num_frames, t_len, config.train.max_stride, rng)

  labels = np.asarray(record['label'], np.int32)
  crowd = np.asarray(record['iscrowd'], bool)
  num_tracks = len(labels)
  rles = np.asarray(record['rle'], dtype=object).reshape(num_tracks, num_frames)
  # decode the clip's masks; order the non-crowd tracks by first appearance
  masks = [[_decode_rle(rles[k, f], h, w) for f in idx] for k in range(num_tracks)]
  first_seen = []
  for k in range(num_tracks):
    if crowd[k]:
      continue
    vis = [t for t in range(t_len) if masks[k][t] is not None and masks[k][t].any()]
    if vis:
      first_seen.append((vis[0], k))
  order = [k for _, k in sorted(first_seen)]
  keep, dropped = order[:n_ids - 1], order[n_ids - 1:]

  bucket = bucket_size(config)
  i = config.input
  if i.train_short_sides:
    short = int(rng.choice(np.asarray(i.train_short_sides)))
    long = i.train_max_long
  else:
    short, long = i.size
  nh, nw = resized_size(h, w, short, long, bucket)
  flip = bool(rng.random() < 0.5) if config.train.flip else False

  images = np.zeros((t_len, *bucket, 3), np.uint8)
  id_map = np.full((t_len, *bucket), BACKGROUND, np.uint8)
  for t, f in enumerate(idx):
    img = decode_jpeg(record['frames'][f])
    if img.shape[:2] != (h, w):
      raise ValueError(f'video {int(record["video_id"])}: frame {int(f)} is '
                       f'{img.shape[1]}x{img.shape[0]}, the record says {w}x{h}')
    ignore = np.zeros((h, w), bool)
    for k in np.nonzero(crowd)[0].tolist() + dropped:
      if masks[k][t] is not None:
        ignore |= masks[k][t]
    frame_map = paint_id_map([masks[k][t] for k in keep], ignore, h, w)
    if (nh, nw) != (h, w):
      img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
      frame_map = np.asarray(Image.fromarray(frame_map).resize((nw, nh),
                                                               Image.NEAREST))
    if flip:
      img, frame_map = img[:, ::-1], frame_map[:, ::-1]
    images[t, :nh, :nw] = img
    id_map[t, :nh, :nw] = frame_map

  box, present, id_target, new_instance = clip_targets(id_map, n_ids)
  label = np.full((n_ids,), -1, np.int32)
  label[:len(keep)] = labels[keep]
  return {
      'image': images, 'id_map': id_map, 'label': label, 'box': box,
      'present': present, 'id_target': id_target,
      'new_instance': new_instance,
      'image_size': np.asarray([nh, nw], np.int32),
      'video_id': np.asarray(record['video_id'], np.int32),
      'frame_index': idx,
  }


def stack_batch(examples):
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def training_dataset(config, source, *, seed: int = 0, batch_size: int | None = None,
                     process_index: int = 0, process_count: int = 1,
                     num_workers: int = 0, prefetch: int = 2):
  """An infinite grain ``IterDataset`` of training batches.

  Args:
    source: a random-access source of video records, e.g.
      ``tfds_builder.open_split(config, 'train')``.
    batch_size: clips per batch on this host (default: the global
      ``train.batch_size`` divided by ``process_count``).
    process_index, process_count: this host's shard of the videos.
    num_workers: grain worker processes (0: decode in this process with
      threads).
  The iterator's ``get_state()`` / ``set_state()`` give an exact resume.
  """
  import grain

  if batch_size is None:
    if config.train.batch_size % process_count:
      raise ValueError(f'train.batch_size={config.train.batch_size} is not '
                       f'divisible by the {process_count} processes')
    batch_size = config.train.batch_size // process_count
  ds = grain.MapDataset.source(source)
  if len(ds) == 0:
    raise ValueError('the training split has no videos')
  if process_count > 1:
    ds = ds[process_index::process_count]
  ds = ds.seed(seed).shuffle().repeat()
  ds = ds.random_map(lambda rec, rng: make_training_clip(rec, rng, config))
  ds = ds.batch(batch_size, drop_remainder=True, batch_fn=stack_batch)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, prefetch),
                                            prefetch_buffer_size=prefetch))
  if num_workers > 0:
    # grain's worker processes read absl flags; outside an absl app (a
    # script, a notebook) nobody parsed them, which grain reports as an
    # UnparsedFlagAccessError
    from absl import flags
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return it
