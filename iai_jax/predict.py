"""Running a trained model on your own video.

``predict_video`` runs an MP4 (or any video ffmpeg reads) or a folder of
frames through the online loop (:class:`iai_jax.inference.OnlineSegmenter`)
and writes an overlay video (one colour per ID, class name and score),
``results.json`` and optionally indexed PNG masks. (A dataset split:
:mod:`iai_jax.eval_split`.)
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from iai_jax import inference, overlay


class PredictError(RuntimeError):
  """Bad input for prediction (a video or frame folder that cannot be read)."""


# ----------------------------------------------------------------- videos
_FRAME_EXT = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def read_frames(path: str, fps: float | None = None):
  """(list of (H, W, 3) uint8 RGB frames, frame rate) of a video or folder."""
  from PIL import Image
  if not os.path.exists(path):
    raise PredictError(f'input {path} does not exist')
  if os.path.isdir(path):
    names = sorted(n for n in os.listdir(path)
                   if n.lower().endswith(_FRAME_EXT))
    if not names:
      raise PredictError(f'{path} holds no image files ({", ".join(_FRAME_EXT)})')
    frames = []
    for n in names:
      try:
        frames.append(np.asarray(Image.open(os.path.join(path, n)).convert('RGB')))
      except OSError as e:
        raise PredictError(f'cannot read frame {os.path.join(path, n)}: {e}') from e
    if len({f.shape for f in frames}) != 1:
      raise PredictError(f'the frames in {path} do not all have the same size')
    return frames, fps or 10.0
  import imageio.v2 as imageio
  try:
    reader = imageio.get_reader(path)
    meta = reader.get_meta_data()
    frames = [np.asarray(f)[..., :3] for f in reader]
    reader.close()
  except Exception as e:  # imageio raises several types for bad files
    raise PredictError(f'cannot read video {path}: {e}') from e
  if not frames:
    raise PredictError(f'video {path} has no frames')
  return frames, fps or float(meta.get('fps') or 10.0)


def predict_video(config, variables, input_path: str, output_dir: str, *,
                  gif: bool = False, png: bool = False, fps: float | None = None,
                  log=print) -> dict:
  """Runs the online model over a video; see the module docstring."""
  import imageio.v2 as imageio
  from PIL import Image

  from iai_jax import results as results_lib
  from iai_jax.data import paths
  frames, fps = read_frames(input_path, fps)
  cats = paths.categories(config)
  names = [n for _, n in cats]
  segmenter = inference.OnlineSegmenter(config, variables, [c for c, _ in cats])
  os.makedirs(output_dir, exist_ok=True)
  overlays = []
  if png:
    os.makedirs(os.path.join(output_dir, 'masks'), exist_ok=True)
  palette = [0, 0, 0] + [v for i in range(255)
                         for v in overlay.id_colour(i)]
  from tqdm import tqdm
  bar = tqdm(total=len(frames), unit='frame', dynamic_ncols=True,
             mininterval=1.0)
  t0 = time.time()
  for f, frame in enumerate(frames):
    instances = segmenter.step(frame)
    overlays.append(overlay.draw_overlay(frame, instances, names))
    if png:
      index = np.zeros(frame.shape[:2], np.uint8)
      for inst in instances:
        index[inst['mask']] = inst['id'] + 1
      img = Image.fromarray(index, mode='P')
      img.putpalette(palette)
      img.save(os.path.join(output_dir, 'masks', f'{f:05d}.png'))
    bar.update(1)
  bar.close()
  dt = time.time() - t0
  tracks = segmenter.finish()
  results = results_lib.video_results(1, tracks, [c for c, _ in cats])
  with open(os.path.join(output_dir, 'results.json'), 'w') as fh:
    json.dump(results, fh)
  video_path = os.path.join(output_dir, 'overlay.mp4')
  even = [o[:o.shape[0] // 2 * 2, :o.shape[1] // 2 * 2] for o in overlays]
  imageio.mimwrite(video_path, even, fps=fps, macro_block_size=1)
  written = {'video': video_path, 'results': os.path.join(output_dir, 'results.json')}
  if gif:
    written['gif'] = os.path.join(output_dir, 'overlay.gif')
    imageio.mimwrite(written['gif'], overlays, duration=1000.0 / fps, loop=0)
  log(f'{len(frames)} frames at {len(frames) / max(dt, 1e-9):.1f} frames/s; '
      f'{len(results)} tracks; wrote ' + ', '.join(written.values()))
  return written
