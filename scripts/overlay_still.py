"""A still PNG of the overlay on a held-out synthetic video (README's picture).

Trains the tiny synthetic model briefly (or restores ``--checkpoint``), runs
``OnlineSegmenter`` frame by frame over held-out synthetic videos and writes
one frame drawn by ``iai_jax.overlay.draw_overlay`` as a PNG. Only instances
scoring at least ``--min_score`` (0.3; the score is the class probability
times the centre-ness) are drawn: the online model also returns the
low-scoring candidates the YouTube-VIS metric wants (class probabilities
down to infer.score_thr, 0.1), which would bury the picture in labels. The
frame is the one with the most such instances among the first ``--videos``
held-out videos (the latest such frame when several tie), unless ``--video``
and ``--frame`` pick one.

How docs/overlay_synthetic.png was made::

    nice -n 5 python scripts/overlay_still.py --steps=600

that is: the synthetic dataset of configs/synthetic.py (generated under
data/synthetic when missing, 120 videos of 12 frames, 10% held out), the
tiny model trained from scratch for 600 steps (the learning rate divided by
ten at 74% and 92% of them, as the 2000-step recipe does; the same training
as notebooks/quickstart.ipynb with its defaults) in runs/overlay_still
(here 19 minutes, sharing the 2 CPU cores with another training job: 0.6-0.8
steps/s), then the frame picked as above, upscaled from 160x96 to 640x384.
The run prints the video, frame and instances it drew (for the committed
PNG: held-out video 3 (id 68), frame 5 of 12: triangle #2 0.62, square #1
0.58, triangle #0 0.42, square #3 0.36; full colour, 131 KB). Run again, it
restores the finished checkpoint and draws the same picture. The PNG is
reduced to a 256-colour palette when the full-colour file is larger than
``--max_kb``.

    python scripts/overlay_still.py --checkpoint=runs/synthetic  # no training
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default=os.path.join(REPO, 'configs', 'synthetic.py'))
  p.add_argument('--data_root', default=os.path.join(REPO, 'data', 'synthetic'))
  p.add_argument('--workdir', default=os.path.join(REPO, 'runs', 'overlay_still'),
                 help='where to train (resumes from its latest checkpoint)')
  p.add_argument('--checkpoint', default=None,
                 help='restore this workdir, checkpoint or converted folder '
                      'instead of training')
  p.add_argument('--steps', type=int, default=600, help='training steps')
  p.add_argument('--videos', type=int, default=6,
                 help='held-out videos searched for the frame to show')
  p.add_argument('--video', type=int, default=None,
                 help='index of the held-out video to draw (with --frame)')
  p.add_argument('--frame', type=int, default=None, help='frame to draw')
  p.add_argument('--min_score', type=float, default=0.3,
                 help='draw only instances scoring at least this')
  p.add_argument('--no_boxes', action='store_true', help='masks and labels only')
  p.add_argument('--output', default=os.path.join(REPO, 'docs',
                                                  'overlay_synthetic.png'))
  p.add_argument('--max_kb', type=float, default=200.0,
                 help='above this, the PNG is written with a 256-colour palette')
  return p.parse_args(argv)


def build_config(args):
  from iai_jax import config_lib
  config = config_lib.load_config_file(args.config)
  with config.unlocked():
    config.dataset.root = args.data_root
  config_lib.check_config(config)
  return config


def train_briefly(config, args):
  """The tiny model trained for ``args.steps`` steps, its lr drops scaled."""
  from iai_jax import checkpoints, train
  from iai_jax.data import pipeline, tfds_builder
  num_videos = len(tfds_builder.open_split(config, 'train'))
  per_epoch = pipeline.steps_per_epoch(config, num_videos)
  with config.unlocked():
    t = config.train
    t.steps = args.steps
    t.decay_epochs = (0.74 * args.steps / per_epoch, 0.92 * args.steps / per_epoch)
    t.log_every = max(1, min(t.log_every, args.steps // 10))
    t.checkpoint_every = min(t.checkpoint_every, args.steps)
  start = time.time()
  train.train(config, args.workdir)
  print(f'train.train to step {args.steps}: {time.time() - start:.0f} s')
  return checkpoints.restore_variables(config, args.workdir)


def run_video(config, variables, record, names):
  """(frames, instances per frame) of one held-out video."""
  from iai_jax import inference
  from iai_jax.data import pipeline
  frames = [pipeline.decode_jpeg(f) for f in record['frames']]
  segmenter = inference.OnlineSegmenter(config, variables)
  found = [segmenter.step(f) for f in frames]
  segmenter.finish()
  return frames, found


def confident(instances, min_score: float):
  return [i for i in instances if i['score'] >= min_score]


def save_png(image, path: str, max_kb: float) -> str:
  """Writes ``image``; with a 256-colour palette if the file is too big."""
  from PIL import Image
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  img = Image.fromarray(image)
  img.save(path, optimize=True)
  kind = 'RGB'
  if os.path.getsize(path) > max_kb * 1024:
    img.quantize(256, method=Image.Quantize.MEDIANCUT,
                 dither=Image.Dither.NONE).save(path, optimize=True)
    kind = '256-colour palette'
  return f'{path} ({kind}, {os.path.getsize(path) / 1024:.0f} KB)'


def main(argv=None):
  args = parse_args(argv)
  from iai_jax import checkpoints, overlay
  from iai_jax.data import paths, tfds_builder
  config = build_config(args)
  tfds_builder.ensure_records(config)
  if args.checkpoint:
    variables = checkpoints.restore_variables(config, args.checkpoint)
  else:
    variables = train_briefly(config, args)
  heldout = tfds_builder.open_split(config, 'heldout')
  names = [n for _, n in paths.categories(config)]
  if args.video is not None:
    candidates = [args.video]
  else:
    candidates = range(min(args.videos, len(heldout)))
  best = None  # (instances, frame index, video index, frames, found)
  for v in candidates:
    frames, found = run_video(config, variables, heldout[v], names)
    found = [confident(f, args.min_score) for f in found]
    if args.frame is not None:
      picks = [args.frame]
    else:
      picks = range(len(frames))
    for k in picks:
      key = (len(found[k]), k)
      if best is None or key > best[0]:
        best = (key, v, frames, found)
  (_, k), v, frames, found = best
  instances = found[k]
  video_id = int(heldout[v]['video_id'])
  print(f'held-out video {v} (id {video_id}), frame {k} of {len(frames)}: '
        + (', '.join(f'{names[i["label"]]} #{i["id"]} {i["score"]:.2f}'
                     for i in instances) or 'nothing found'))
  image = overlay.draw_overlay(frames[k], instances, names,
                               boxes=not args.no_boxes)
  print('wrote', save_png(image, args.output, args.max_kb))


if __name__ == '__main__':
  main()
