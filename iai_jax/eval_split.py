"""Online inference over a dataset split: submission files and local scores.

``evaluate_split`` runs every video of a split through the online loop
(:class:`iai_jax.inference.OnlineSegmenter`), writes ``results.json`` and a
zip for the YouTube-VIS / OVIS servers, and, on the held-out split of the
training videos, scores the results with :mod:`iai_jax.evaluate`.
"""

from __future__ import annotations

import io
import os
import time

from iai_jax import atomic, inference
from iai_jax import overlay as overlay_lib
from iai_jax.data import paths


def heldout_ground_truth(config, video_ids) -> dict:
  """The training annotation JSON restricted to ``video_ids``."""
  from iai_jax.data import vis_json
  ann, _ = paths.dataset_paths(config, 'train')
  return vis_json.heldout_ground_truth(ann, video_ids)


def progress_bar(total, unit):
  from tqdm import tqdm
  return tqdm(total=total, unit=unit, dynamic_ncols=True, mininterval=1.0)


def run_videos(segmenter, videos, category_ids, *, total_frames=None):
  """Runs (video_id, frame iterator) pairs; returns the results list."""
  from iai_jax import results as results_lib
  out = []
  bar = progress_bar(total_frames, 'frame')
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
  names = [n for _, n in paths.categories(config)]
  segmenter = inference.OnlineSegmenter(config, variables)
  overlays = [overlay_lib.draw_overlay(f, segmenter.step(f), names) for f in frames]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  buffer = io.BytesIO()
  imageio.mimwrite(buffer, overlays, format='GIF', duration=1000.0 / fps,
                   loop=0)
  atomic.write_bytes(path, buffer.getvalue())
  return path


def evaluate_split(config, variables, workdir: str, split: str | None = None,
                   log=print, overlay: bool = False,
                   associations: bool = True) -> dict | None:
  """Online inference on every video of ``split`` of the TFDS records.

  ``split``: 'heldout' (default when it exists: scored locally) or 'valid'
  (the official validation videos: results for the server only). Writes
  ``results.json``, ``results.zip`` and, when scored, ``eval_metrics.json``
  under ``workdir/eval_<split>``; returns the metrics or None: AP/AR and,
  with ``associations``, HOTA / DetA / AssA / LocA, IDF1 / IDP / IDR, MOTA /
  MOTP / IDSW / Frag (:mod:`iai_jax.track_metrics`) and the identity kept
  across gaps ('id_kept_by_gap', :mod:`iai_jax.reid_metrics`).
  """
  from iai_jax import evaluate as evaluate_lib
  from iai_jax import results as results_lib
  from iai_jax.data import pipeline, tfds_builder

  if split is None:
    split = 'heldout' if config.dataset.heldout_fraction > 0 else 'valid'
  source = tfds_builder.open_split(config, split)
  category_ids = [c for c, _ in paths.categories(config)]
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
  stats = dict(evaluation.stats)
  if associations:
    from iai_jax import reid_metrics, track_metrics
    tracks = track_metrics.evaluate_tracks(gt, results)
    log(track_metrics.format_table(tracks, ('HOTA', 'Identity', 'CLEAR')))
    for family in ('HOTA', 'Identity', 'CLEAR'):
      stats.update({k: tracks[k] for k in track_metrics.HEADLINE_KEYS[family]})
    gaps = reid_metrics.id_accuracy_by_gap(gt, results)
    log(reid_metrics.format_table(gaps))
    stats['id_kept_by_gap'] = gaps
  atomic.write_json(os.path.join(out_dir, 'eval_metrics.json'), stats,
                    indent=1)
  return stats
