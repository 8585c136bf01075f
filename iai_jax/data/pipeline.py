"""The grain clip pipeline: static-shape training batches from TFDS records.

One record is one video (see :mod:`iai_jax.data.tfds_builder`). A training
example is a clip of ``train.clip_len`` (T) frames of one video, drawn as
the authors' ``YTVOSDataset`` draws it:

* an epoch is ``train.clips_per_video`` (5) clips of every video, in a
  fresh random order;
* only frames with at least one (non-crowd) instance of positive area can
  be drawn; with fewer than T such frames they repeat cyclically
  (0, 1, 2, 0, 1);
* a start uniform in [0, L - T] over those frames, then T - 1 strides, each
  uniform in 1..min(``train.max_stride``, frames left for the remaining
  strides);
* the clip's instances (non-crowd tracks present in one of its frames) are
  numbered 0..K-1 in ascending order of their track id; K is capped at
  N - 1 (``model.max_obj_num`` - 1): further instances become ignore
  regions (the authors' code has no cap and gives them colliding IDs);
* every frame is augmented on its own: resized keeping the ratio to the
  fixed ``input.size`` or, with ``input.train_scale_range``, to a (long,
  short) scale drawn once per clip or per frame (``input.train_scale_per``)
  with OpenCV's bilinear (masks nearest); flipped horizontally with
  probability 0.5 (``train.flip``); padded into one fixed bucket (frames
  that do not fit, i.e. portrait ones, are shrunk further).

Per clip (a batch stacks clips in front; M = ``model.max_obj_num``):
  image (T, H, W, 3) uint8 RGB, not normalised (normalised and its padding
    zeroed on the device, :func:`iai_jax.preprocess.normalize`)
  image_size (T, 2) int32 each frame's resized, unpadded (h, w)
  id_map (T, H, W) uint8: the clip-instance number of each pixel (a pixel
    of several instances belongs to the smallest; equal areas: the lowest
    number), ``IGNORE`` for dropped instances, ``BACKGROUND`` elsewhere
    (crowd regions and padding included) - what the memory is written with
  label (M,) int32 class of each clip instance, -1 for padding
  box (T, M, 4) float32 x1, y1, x2, y2: the instance's box in the original
    frame (its mask's, x2/y2 exclusive) scaled to the frame and clipped to
    it, then flipped with the frame
  center (T, M, 2) float32 (x, y) centre of mass of the resized mask (0, 0
    for an empty mask), for the centre sampling of the targets
  mask4 (T, M, H/4, W/4) uint8: each instance's own resized mask sampled at
    stride 4, offset 2 (the mask loss's ground truth; overlaps kept)
  present (T, M) bool: the instance has positive area in this frame
  id_target (T, M) int32: k if instance k was present in an earlier frame of
    the clip, N-1 ("new") in the frame it first appears, -1 where absent
  new_instance (T,) bool: some instance first appears in this frame
  video_id () int32, frame_index (T,) int32
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from iai_jax import preprocess

BACKGROUND = 255
IGNORE = 254

FIX_RECORDS = ('find every such problem with python -m iai_jax.data.check '
               '--config=<your config>, fix the files, then rebuild the '
               'records with python -m iai_jax.data.build --config=<your '
               'config> --overwrite')


class TrainingDataError(ValueError):
  """A video record that cannot be trained on; the message names the video,
  the frame (and its file) and says how to fix it."""


def bucket_size(config) -> tuple[int, int]:
  """The fixed padded (H, W) every training frame is padded into."""
  i = config.input
  short, long = i.size
  if i.train_scale_range:
    long = max(lg for lg, _ in i.train_scale_range)
    short = max(s for _, s in i.train_scale_range)
  return preprocess.padded_size(short, long, i.size_divisor)


def draw_scale(config, rng: np.random.Generator) -> tuple[int, int]:
  """(short, long) a frame is resized to: ``input.size``, or with
  ``input.train_scale_range`` ((long_lo, short_lo), (long_hi, short_hi)) a
  long edge and a short edge drawn uniformly and independently (mmdet's
  'range' multi-scale mode)."""
  i = config.input
  if not i.train_scale_range:
    return tuple(i.size)
  (long_lo, short_lo), (long_hi, short_hi) = i.train_scale_range
  long = int(rng.integers(min(long_lo, long_hi), max(long_lo, long_hi) + 1))
  short = int(rng.integers(min(short_lo, short_hi), max(short_lo, short_hi) + 1))
  return short, long


def sample_clip_frames(valid_frames, clip_len: int, max_stride: int,
                       rng: np.random.Generator) -> np.ndarray:
  """Frame indices of one clip, drawn among ``valid_frames`` (module doc)."""
  frames = list(valid_frames)
  n = len(frames)
  if n == 0:
    raise ValueError('no frame to draw a clip from')
  if n < clip_len:
    frames = frames + [frames[i % n] for i in range(n, clip_len)]
    n = clip_len
  cur = int(rng.integers(0, n - clip_len + 1))
  out = [frames[cur]]
  for left in range(clip_len - 1, 0, -1):
    cur += int(rng.integers(1, min(max_stride, n - cur - left) + 1))
    out.append(frames[cur])
  return np.asarray(out, np.int32)


def fit_size(height: int, width: int, short: int, long: int,
             bucket: tuple[int, int]) -> tuple[int, int]:
  """The resized (h, w) of a frame, shrunk further when it does not fit
  the bucket (portrait frames in a landscape bucket)."""
  nh, nw = preprocess.rescale_size(height, width, short, long)
  if nh > bucket[0] or nw > bucket[1]:
    fit = min(bucket[0] / nh, bucket[1] / nw)
    nh, nw = max(1, int(nh * fit)), max(1, int(nw * fit))
  return nh, nw


def decode_jpeg(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert('RGB'))


def _frame_name(record, f: int) -> str:
  names = record.get('file_names') if hasattr(record, 'get') else None
  if names is None or f >= len(names):
    return ''
  name = names[f]
  return f' ({name.decode(errors="replace") if isinstance(name, bytes) else name})'


def decode_record_frame(record, f: int) -> np.ndarray:
  """Frame ``f`` of a record as (H, W, 3) uint8 RGB, checked against the
  record's size; TrainingDataError naming the video and frame if not."""
  vid, name = int(record['video_id']), _frame_name(record, f)
  try:
    img = decode_jpeg(record['frames'][f])
  except (OSError, ValueError, SyntaxError) as e:  # PIL's decode errors
    raise TrainingDataError(
        f'video {vid} frame {f}{name}: the image does not decode '
        f'({type(e).__name__}: {e}); {FIX_RECORDS}') from e
  h, w = int(record['height']), int(record['width'])
  if img.shape[:2] != (h, w):
    raise TrainingDataError(
        f'video {vid} frame {f}{name} is {img.shape[1]}x{img.shape[0]} '
        f'(width x height), the annotations say {w}x{h}; {FIX_RECORDS}')
  return img


def check_record_masks(record, rles: np.ndarray) -> None:
  """Every RLE of a record (tracks x frames of counts, b'' where absent)
  checked before pycocotools decodes it; TrainingDataError naming the
  video, track and frame of the first bad one."""
  from iai_jax import validate
  h, w = int(record['height']), int(record['width'])
  where = [(k, f) for k in range(rles.shape[0]) for f in range(rles.shape[1])
           if len(rles[k, f])]
  problems = validate.compressed_rle_problems(
      [{'size': [h, w], 'counts': rles[k, f]} for k, f in where])
  for (k, f), problem in zip(where, problems):
    if problem:
      raise TrainingDataError(
          f'video {int(record["video_id"])} frame {f}{_frame_name(record, f)}'
          f': the mask of track {int(record["track_id"][k])}: {problem}; '
          f'{FIX_RECORDS}')


def _rle(counts: bytes, h: int, w: int) -> dict | None:
  if not counts:
    return None
  return {'size': [h, w], 'counts': counts}


def paint_id_map(masks: list, ignore: np.ndarray | None, h: int, w: int
                 ) -> np.ndarray:
  """One frame's id_map: masks[k] (bool (h, w) or None) -> uint8 map.

  Larger instances are painted first, so a pixel shared by several instances
  ends with the smallest (equal areas: the lowest k); ``ignore`` pixels not
  covered by an instance -> IGNORE.
  """
  out = np.full((h, w), BACKGROUND, np.uint8)
  if ignore is not None:
    out[ignore] = IGNORE
  order = sorted((-int(m.sum()), -k) for k, m in enumerate(masks)
                 if m is not None)
  for _, neg_k in order:
    out[masks[-neg_k]] = -neg_k
  return out


def clip_targets(present: np.ndarray, max_obj_num: int):
  """ID targets and new-instance flags from (T, M) presence."""
  m = max_obj_num
  seen_before = np.cumsum(present, axis=0) - present > 0
  id_target = np.where(present, np.where(seen_before, np.arange(m)[None],
                                          m - 1), -1).astype(np.int32)
  new_instance = (present & ~seen_before).any(axis=1)
  return id_target, new_instance


def _mask_box(mask: np.ndarray) -> np.ndarray:
  ys, xs = np.nonzero(mask)
  return np.asarray([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1],
                    np.float32)


def make_training_clip(record: dict, rng: np.random.Generator, config
                       ) -> dict[str, Any]:
  """One augmented, padded training clip from one video record."""
  t_len = config.train.clip_len
  n_ids = config.model.max_obj_num
  h, w = int(record['height']), int(record['width'])
  num_frames = len(record['frames'])
  labels = np.asarray(record['label'], np.int32)
  track_ids = np.asarray(record['track_id'], np.int64)
  crowd = np.asarray(record['iscrowd'], bool)
  num_tracks = len(labels)
  rles = np.asarray(record['rle'], dtype=object).reshape(num_tracks, num_frames)
  check_record_masks(record, rles)
  area = np.zeros((num_tracks, num_frames), np.int64)
  for k in range(num_tracks):
    for f in range(num_frames):
      rle = _rle(rles[k, f], h, w)
      if rle is not None:
        area[k, f] = int(mask_utils.area(rle))
  valid = ((area > 0) & ~crowd[:, None]).any(axis=0)
  frames = np.flatnonzero(valid) if valid.any() else np.arange(num_frames)
  idx = sample_clip_frames(frames, t_len, config.train.max_stride, rng)

  in_clip = [k for k in range(num_tracks)
             if not crowd[k] and (area[k, idx] > 0).any()]
  in_clip.sort(key=lambda k: track_ids[k])
  keep, dropped = in_clip[:n_ids - 1], in_clip[n_ids - 1:]

  bucket = bucket_size(config)
  i = config.input
  per_frame_scale = bool(i.train_scale_range) and i.train_scale_per == 'frame'
  scale = draw_scale(config, rng)

  images = np.zeros((t_len, *bucket, 3), np.uint8)
  id_map = np.full((t_len, *bucket), BACKGROUND, np.uint8)
  image_size = np.zeros((t_len, 2), np.int32)
  box = np.zeros((t_len, n_ids, 4), np.float32)
  center = np.zeros((t_len, n_ids, 2), np.float32)
  mask4 = np.zeros((t_len, n_ids, bucket[0] // 4, bucket[1] // 4), np.uint8)
  present = np.zeros((t_len, n_ids), bool)
  for t, f in enumerate(idx):
    if per_frame_scale and t > 0:
      scale = draw_scale(config, rng)
    img = decode_record_frame(record, int(f))
    nh, nw = fit_size(h, w, scale[0], scale[1], bucket)
    flip = bool(config.train.flip) and bool(rng.random() < 0.5)
    img = preprocess.resize_image(img, (nh, nw))
    if flip:
      img = img[:, ::-1]
    images[t, :nh, :nw] = img
    image_size[t] = (nh, nw)
    sx, sy = np.float32(nw / w), np.float32(nh / h)
    frame_masks = []
    for j, k in enumerate(keep):
      if area[k, f] <= 0:
        frame_masks.append(None)
        continue
      full = mask_utils.decode(_rle(rles[k, f], h, w)).astype(bool)
      b = _mask_box(full) * np.asarray([sx, sy, sx, sy], np.float32)
      b = np.clip(b, 0, np.asarray([nw, nh, nw, nh], np.float32))
      m = preprocess.resize_mask(full.view(np.uint8), (nh, nw)).astype(bool)
      if flip:
        m = m[:, ::-1]
        b = np.asarray([nw - b[2], b[1], nw - b[0], b[3]], np.float32)
      present[t, j] = True
      box[t, j] = b
      s = m.sum()
      if s > 0:
        ys, xs = np.nonzero(m)
        center[t, j] = (xs.sum() / s, ys.sum() / s)
      padded = np.zeros(bucket, np.uint8)
      padded[:nh, :nw] = m
      mask4[t, j] = padded[2::4, 2::4]
      frame_masks.append(m)
    ignore = np.zeros((nh, nw), bool)
    for k in dropped:
      if area[k, f] > 0:
        full = mask_utils.decode(_rle(rles[k, f], h, w)).astype(bool)
        m = preprocess.resize_mask(full.view(np.uint8), (nh, nw)).astype(bool)
        ignore |= m[:, ::-1] if flip else m
    id_map[t, :nh, :nw] = paint_id_map(frame_masks, ignore, nh, nw)

  id_target, new_instance = clip_targets(present, n_ids)
  label = np.full((n_ids,), -1, np.int32)
  label[:len(keep)] = labels[keep]
  return {
      'image': images, 'image_size': image_size, 'id_map': id_map,
      'label': label, 'box': box, 'center': center, 'mask4': mask4,
      'present': present, 'id_target': id_target,
      'new_instance': new_instance,
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
  Each epoch draws ``train.clips_per_video`` clips of every video, in an
  order reshuffled every epoch. The iterator's ``get_state()`` /
  ``set_state()`` give an exact resume.
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
  ds = ds.repeat(config.train.clips_per_video).seed(seed).shuffle().repeat()
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


def steps_per_epoch(config, num_videos: int) -> int:
  """Training steps of one epoch: every video gives clips_per_video clips."""
  clips = num_videos * config.train.clips_per_video
  return max(1, -(-clips // config.train.batch_size))
