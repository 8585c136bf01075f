"""Running a trained model: on a dataset split (evaluation) or your own video.

``evaluate_split`` runs every video of a split through the online loop
(:class:`iai_jax.inference.OnlineSegmenter`), writes ``results.json`` and a
zip for the YouTube-VIS / OVIS servers, and, on the held-out split of the
training videos, scores the results with :mod:`iai_jax.evaluate`.

``predict_video`` runs an MP4 (or any video ffmpeg reads) or a folder of
frames, and writes an overlay video (one colour per ID, class name and
score), ``results.json`` and optionally indexed PNG masks.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from iai_jax import inference


class PredictError(RuntimeError):
  """Bad input for prediction or evaluation (file, checkpoint, split)."""


# ----------------------------------------------------------------- weights
def restore_variables(config, path: str, log=print):
  """Model variables from a training workdir or a converted checkpoint.

  ``path`` may be a training workdir (its latest checkpoint is used), one
  step directory of it, or a directory written by ``python -m
  iai_jax.convert``.
  """
  import jax
  import orbax.checkpoint as ocp

  from iai_jax import train
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise PredictError(f'checkpoint {path} does not exist. Pass a training '
                       'workdir, one of its checkpoints/<step> folders, or a '
                       'folder written by python -m iai_jax.convert.')
  ckpt_dir, step = None, None
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    ckpt_dir = os.path.join(path, 'checkpoints')
  elif os.path.isdir(os.path.join(path, 'state')) and os.path.basename(path).isdigit():
    ckpt_dir, step = os.path.dirname(path), int(os.path.basename(path))
  if ckpt_dir is None:
    from iai_jax import weights
    return weights.load_variables(path, config)
  manager = ocp.CheckpointManager(ckpt_dir, item_names=('state', 'data', 'config'))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise PredictError(f'{ckpt_dir} holds no complete checkpoint yet')
  abstract = train.abstract_train_state(config)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
  except (ValueError, KeyError, TypeError) as e:
    raise PredictError(
        f'the checkpoint {ckpt_dir}/{step} does not fit the config (model '
        f'size, classes or ID slots differ?): {str(e)[:800]}') from e
  log(f'restored step {step} from {ckpt_dir}')
  state = restored.state
  return jax.device_get({'params': state.params,
                         'batch_stats': state.batch_stats})


# ----------------------------------------------------------------- splits
def _categories(config):
  """[(id, name)] of the dataset, from its training annotation JSON."""
  from iai_jax.data import tfds_builder
  ann, _ = tfds_builder.dataset_paths(config, 'train')
  if not os.path.exists(ann):
    return [(k + 1, f'class {k}') for k in range(config.model.num_classes)]
  with open(ann) as f:
    cats = json.load(f)['categories']
  return sorted((c['id'], c.get('name', str(c['id']))) for c in cats)


def heldout_ground_truth(config, video_ids) -> dict:
  """The training annotation JSON restricted to ``video_ids``."""
  from iai_jax.data import tfds_builder, vis_json
  ann, _ = tfds_builder.dataset_paths(config, 'train')
  return vis_json.heldout_ground_truth(ann, video_ids)


def _progress(total, unit):
  from tqdm import tqdm
  return tqdm(total=total, unit=unit, dynamic_ncols=True, mininterval=1.0)


def run_videos(segmenter, videos, category_ids, *, total_frames=None):
  """Runs (video_id, frame iterator) pairs; returns the results list."""
  from iai_jax import results as results_lib
  out = []
  bar = _progress(total_frames, 'frame')
  for video_id, frames in videos:
    for frame in frames:
      segmenter.step(frame)
      bar.update(1)
    out.extend(results_lib.video_results(video_id, segmenter.finish(),
                                         category_ids))
  bar.close()
  return out


def overlay_gif(config, variables, frames, path: str, fps: float = 6.0) -> str:
  """Runs one video and writes its overlay (IDs, classes, scores) as a GIF."""
  import imageio.v2 as imageio
  cats = _categories(config)
  names = [n for _, n in cats]
  segmenter = inference.OnlineSegmenter(config, variables)
  overlays = [draw_overlay(f, segmenter.step(f), names) for f in frames]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  imageio.mimwrite(path, overlays, duration=1000.0 / fps, loop=0)
  return path


def evaluate_split(config, variables, workdir: str, split: str | None = None,
                   log=print, overlay: bool = False) -> dict | None:
  """Online inference on every video of ``split`` of the TFDS records.

  ``split``: 'heldout' (default when it exists: scored locally) or 'valid'
  (the official validation videos: results for the server only). Writes
  ``results.json``, ``results.zip`` and, when scored, ``eval_metrics.json``
  under ``workdir/eval_<split>``; returns the metrics or None.
  """
  from iai_jax import evaluate as evaluate_lib
  from iai_jax import results as results_lib
  from iai_jax.data import pipeline, tfds_builder

  if split is None:
    split = 'heldout' if config.dataset.heldout_fraction > 0 else 'valid'
  source = tfds_builder.open_split(config, split)
  cats = _categories(config)
  category_ids = [c for c, _ in cats]
  segmenter = inference.OnlineSegmenter(config, variables, category_ids)
  records = [source[i] for i in range(len(source))]
  videos_meta = [{'id': int(r['video_id']), 'length': len(r['frames']),
                  'height': int(r['height']), 'width': int(r['width'])}
                 for r in records]
  log(f'evaluating {len(records)} videos of split {split!r}')
  t0 = time.time()
  results = run_videos(
      segmenter,
      ((int(r['video_id']), (pipeline.decode_jpeg(f) for f in r['frames']))
       for r in records),
      category_ids, total_frames=sum(v['length'] for v in videos_meta))
  frames = sum(v['length'] for v in videos_meta)
  log(f'{frames} frames in {time.time() - t0:.1f} s '
      f'({frames / max(time.time() - t0, 1e-9):.1f} frames/s)')
  out_dir = os.path.join(workdir, f'eval_{split}')
  json_path, zip_path = results_lib.write_submission(results, out_dir,
                                                     videos_meta)
  log(f'wrote {json_path} and {zip_path}')
  if overlay and records:
    gif = overlay_gif(config, variables,
                      [pipeline.decode_jpeg(f) for f in records[0]['frames']],
                      os.path.join(out_dir, f'overlay_video{videos_meta[0]["id"]}.gif'))
    log(f'wrote {gif}')
  if split != 'heldout':
    log('no local ground truth for this split: upload the zip to the '
        'benchmark server to score it')
    return None
  gt = heldout_ground_truth(config, [v['id'] for v in videos_meta])
  ovis = config.dataset.name == 'ovis'
  evaluation = evaluate_lib.run_evaluation(gt, results, ovis=ovis)
  log(evaluate_lib.format_table(evaluation))
  with open(os.path.join(out_dir, 'eval_metrics.json'), 'w') as f:
    json.dump(evaluation.stats, f, indent=1)
  return evaluation.stats


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


def id_colour(track_id: int) -> tuple[int, int, int]:
  """A stable, well-spread colour for an ID (golden-angle hue steps)."""
  import colorsys
  h = (track_id * 0.618033988749895) % 1.0
  r, g, b = colorsys.hsv_to_rgb(h, 0.75, 1.0)
  return int(r * 255), int(g * 255), int(b * 255)


def draw_overlay(frame: np.ndarray, instances, names) -> np.ndarray:
  """The frame with each instance's mask, box, class name and score."""
  from PIL import Image, ImageDraw
  out = frame.astype(np.float32)
  for inst in instances:
    colour = np.array(id_colour(inst['id']), np.float32)
    m = inst['mask']
    out[m] = 0.5 * out[m] + 0.5 * colour
  img = Image.fromarray(out.astype(np.uint8))
  draw = ImageDraw.Draw(img)
  for inst in instances:
    colour = id_colour(inst['id'])
    x1, y1, x2, y2 = inst['box']
    draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
    label = names[inst['label']] if inst['label'] < len(names) else str(inst['label'])
    draw.text((x1 + 3, max(y1 - 12, 0)), f'{inst["id"]} {label} {inst["score"]:.2f}',
              fill=colour)
  return np.asarray(img)


def predict_video(config, variables, input_path: str, output_dir: str, *,
                  gif: bool = False, png: bool = False, fps: float | None = None,
                  log=print) -> dict:
  """Runs the online model over a video; see the module docstring."""
  import imageio.v2 as imageio
  from PIL import Image

  from iai_jax import results as results_lib
  frames, fps = read_frames(input_path, fps)
  cats = _categories(config)
  names = [n for _, n in cats]
  segmenter = inference.OnlineSegmenter(config, variables, [c for c, _ in cats])
  os.makedirs(output_dir, exist_ok=True)
  overlays = []
  if png:
    os.makedirs(os.path.join(output_dir, 'masks'), exist_ok=True)
  palette = [0, 0, 0] + [v for i in range(255) for v in id_colour(i)]
  bar = _progress(len(frames), 'frame')
  t0 = time.time()
  for f, frame in enumerate(frames):
    instances = segmenter.step(frame)
    overlays.append(draw_overlay(frame, instances, names))
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
