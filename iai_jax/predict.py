"""Running a trained model on your own video.

``predict_video`` runs an MP4 (or any video ffmpeg reads) or a folder of
frames through the online loop (:class:`iai_jax.inference.OnlineSegmenter`)
and writes an overlay video (one colour per ID, class name and score),
``results.json`` and optionally an overlay GIF and indexed PNG masks. (A
dataset split: :mod:`iai_jax.eval_split`.)

It streams: each frame is decoded, run, drawn and written before the next
one is read, so memory does not grow with the video (only the video's
tracks, one compressed RLE per ID and frame, are kept until the end).
Everything is written to a staging folder next to ``--output`` that replaces
it as a whole at the end: an interrupted run leaves the previous outputs as
they were, and a finished one never leaves old files beside the new ones.
An output folder that is not empty is refused unless ``overwrite``.
"""

from __future__ import annotations

import os
import time
from typing import Iterator

import numpy as np

from iai_jax import atomic, inference, overlay


class PredictError(RuntimeError):
  """Bad input or output for prediction (a video or frame folder that cannot
  be read, an output folder that cannot be written)."""


# ----------------------------------------------------------------- paths
_FRAME_EXT = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
# what predict_video writes; --overwrite replaces only folders of these
OUTPUTS = ('overlay.mp4', 'overlay.gif', 'results.json', 'masks')


def _frame_names(path: str) -> list[str]:
  names = sorted(n for n in os.listdir(path) if n.lower().endswith(_FRAME_EXT))
  if not names:
    raise PredictError(f'{path} holds no image files ({", ".join(_FRAME_EXT)})'
                       '; pass a video file or a folder of frames')
  return names


def check_paths(input_path: str, output_dir: str, overwrite: bool = False
                ) -> None:
  """PredictError, before any work, for an input that does not exist or an
  output folder that cannot be written or holds files (unless
  ``overwrite``)."""
  if not os.path.exists(input_path):
    raise PredictError(f'input {input_path} does not exist; pass a video file '
                       'or a folder of frames with --input')
  if os.path.isdir(input_path):
    _frame_names(input_path)
  out = os.path.abspath(output_dir)
  if os.path.lexists(out) and not os.path.isdir(out):
    raise PredictError(f'output {out} is a file; pass a folder with --output')
  present = sorted(os.listdir(out)) if os.path.isdir(out) else []
  listed = ', '.join(present[:4]) + (', ...' if len(present) > 4 else '')
  if present and not overwrite:
    raise PredictError(
        f'output folder {out} is not empty ({listed}); pass --overwrite to '
        'replace its content as a whole, or choose another --output')
  if out in (os.path.abspath(os.sep), os.path.expanduser('~'), os.getcwd()):
    raise PredictError(f'output folder {out} would be replaced as a whole; '
                       'choose a folder of its own for --output')
  foreign = [n for n in present if n not in OUTPUTS]
  if foreign:  # --overwrite deletes the folder: only ever a prediction's
    raise PredictError(
        f'output folder {out} holds files that a prediction does not write '
        f'({", ".join(foreign[:4])}{", ..." if len(foreign) > 4 else ""}); '
        '--overwrite replaces the folder as a whole, so choose an empty or '
        'new --output')
  parent = os.path.dirname(out)
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise PredictError(f'cannot write {out}: {parent} is not a writable '
                       'folder; choose another --output')


# ----------------------------------------------------------------- videos
def open_frames(path: str, fps: float | None = None
                ) -> tuple[Iterator[np.ndarray], float, int | None]:
  """(an iterator over the (H, W, 3) uint8 RGB frames of a video or folder,
  the frame rate, the frame count when known). Frames are decoded one at a
  time; a frame that does not decode, or a folder frame of another size, is
  a PredictError naming it."""
  if not os.path.exists(path):
    raise PredictError(f'input {path} does not exist; pass a video file or a '
                       'folder of frames with --input')
  if os.path.isdir(path):
    names = _frame_names(path)
    return _folder_frames(path, names), fps or 10.0, len(names)
  import imageio.v2 as imageio
  try:
    reader = imageio.get_reader(path)
    meta = reader.get_meta_data()
  except Exception as e:  # imageio raises several types for bad files
    raise PredictError(f'cannot read video {path}: {e}') from e
  count = meta.get('nframes')
  count = int(count) if isinstance(count, (int, float)) and np.isfinite(
      count) and count > 0 else None
  return _video_frames(path, reader), fps or float(meta.get('fps') or 10.0), \
      count


def _folder_frames(path: str, names: list[str]) -> Iterator[np.ndarray]:
  from PIL import Image
  size = None
  for n in names:
    file = os.path.join(path, n)
    try:
      with Image.open(file) as im:
        frame = np.asarray(im.convert('RGB'))
    except (OSError, ValueError, SyntaxError) as e:  # PIL's decode errors
      raise PredictError(f'cannot read frame {file}: {e}; replace or remove '
                         'the file') from e
    if size is None:
      size = frame.shape
    elif frame.shape != size:
      raise PredictError(
          f'frame {file} is {frame.shape[1]}x{frame.shape[0]}, the frames '
          f'before it are {size[1]}x{size[0]} (width x height); a folder '
          'must hold the frames of one video')
    yield frame


def _video_frames(path: str, reader) -> Iterator[np.ndarray]:
  index = 0
  try:
    for frame in reader:
      yield np.ascontiguousarray(np.asarray(frame)[..., :3])
      index += 1
  except Exception as e:  # imageio / ffmpeg raise several types
    raise PredictError(f'cannot read frame {index} of video {path}: {e}') from e
  finally:
    reader.close()
  if index == 0:
    raise PredictError(f'video {path} has no frames')


def read_frames(path: str, fps: float | None = None):
  """(list of (H, W, 3) uint8 RGB frames, frame rate) of a video or folder
  (all frames in memory: for short clips; predict_video streams)."""
  frames, fps, _ = open_frames(path, fps)
  return list(frames), fps


class GifWriter:
  """An animated GIF written frame by frame (Pillow would hold every frame
  until the end): each frame with its own 256-colour palette."""

  def __init__(self, path: str, fps: float):
    self._file = open(path, 'wb')
    self._duration = max(1, int(round(1000.0 / fps)))
    self._started = False

  def append(self, frame: np.ndarray) -> None:
    from PIL import GifImagePlugin, Image
    image = Image.fromarray(frame).quantize(colors=256)
    if not self._started:
      header, _ = GifImagePlugin.getheader(
          image, info={'loop': 0, 'duration': self._duration})
      self._file.write(b''.join(header))
      self._started = True
    for part in GifImagePlugin.getdata(image, duration=self._duration,
                                       include_color_table=True):
      self._file.write(part)

  def close(self) -> None:
    if self._started:
      self._file.write(b';')
    self._file.close()


# ----------------------------------------------------------------- predict
def _run(segmenter, frames, count, stage, fps, names, category_ids, gif, png):
  """Every frame: run, draw, write into ``stage``; then results.json.
  Returns (frames, seconds, results)."""
  import imageio.v2 as imageio
  from PIL import Image
  from tqdm import tqdm

  from iai_jax import results as results_lib
  palette = [0, 0, 0] + [v for i in range(255)
                         for v in overlay.id_colour(i)]
  if png:
    os.makedirs(os.path.join(stage, 'masks'))
  video = imageio.get_writer(os.path.join(stage, 'overlay.mp4'), fps=fps,
                             macro_block_size=1)
  gif_writer = GifWriter(os.path.join(stage, 'overlay.gif'), fps) if gif \
      else None
  bar = tqdm(total=count, unit='frame', dynamic_ncols=True, mininterval=1.0)
  t0, n = time.time(), 0
  try:
    for frame in frames:
      instances = segmenter.step(frame)
      drawn = overlay.draw_overlay(frame, instances, names)
      video.append_data(drawn[:drawn.shape[0] // 2 * 2,
                              :drawn.shape[1] // 2 * 2])
      if gif_writer is not None:
        gif_writer.append(drawn)
      if png:
        index = np.zeros(frame.shape[:2], np.uint8)
        for inst in instances:
          index[inst['mask']] = inst['id'] + 1
        img = Image.fromarray(index, mode='P')
        img.putpalette(palette)
        img.save(os.path.join(stage, 'masks', f'{n:05d}.png'))
      n += 1
      bar.update(1)
  finally:
    bar.close()
    video.close()
    if gif_writer is not None:
      gif_writer.close()
  dt = time.time() - t0
  results = results_lib.video_results(1, segmenter.finish(), category_ids)
  atomic.write_json(os.path.join(stage, 'results.json'), results)
  return n, dt, results


def predict_video(config, variables, input_path: str, output_dir: str, *,
                  gif: bool = False, png: bool = False, fps: float | None = None,
                  overwrite: bool = False, log=print) -> dict:
  """Runs the online model over a video; see the module docstring.

  Returns {'video', 'results'[, 'gif']: paths in ``output_dir``}.
  """
  from iai_jax.data import paths
  check_paths(input_path, output_dir, overwrite)
  frames, fps, count = open_frames(input_path, fps)
  cats = paths.categories(config)
  names = [n for _, n in cats]
  segmenter = inference.OnlineSegmenter(config, variables, [c for c, _ in cats])
  output_dir = os.path.abspath(output_dir)
  written = {'video': os.path.join(output_dir, 'overlay.mp4'),
             'results': os.path.join(output_dir, 'results.json')}
  if gif:
    written['gif'] = os.path.join(output_dir, 'overlay.gif')
  try:
    with atomic.staged_dir(output_dir) as stage:
      n, dt, results = _run(segmenter, frames, count, stage, fps, names,
                            [c for c, _ in cats], gif, png)
  except OSError as e:
    raise PredictError(f'cannot write the outputs to {output_dir}: {e}; '
                       'choose another --output') from e
  log(f'{n} frames at {n / max(dt, 1e-9):.1f} frames/s; {len(results)} '
      'tracks; wrote ' + ', '.join(written.values()))
  return written
