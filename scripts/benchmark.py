"""Speed and memory record of iai_jax (never run by the tests).

  python scripts/benchmark.py data  [--json=OUT.json]
  python scripts/benchmark.py frame [--json=OUT.json]
  python scripts/benchmark.py predict --video_size=720,1280 [--json=OUT.json]
  python scripts/benchmark.py all

data:  training clips per second from TFDS records at 640x360 (a synthetic
       dataset of 640x360 videos is generated and converted in a temp dir),
       with the loader in this process and with worker processes.
predict: python -m iai_jax.main --mode=predict over a 100- and a 1,000-frame
       video (--video_size=720,1280 for 720p), each in a fresh process: peak
       RSS (memory must not grow with the video) and wall time.
frame: the network's per-frame step (backbone, association with the memory,
       FPN, heads, memory write) streaming one 360x640 frame at a time with
       ResNet-50: compile time, ms per frame at frames 10 and 100, and
       GFLOP/s achieved (XLA cost analysis).

Prints a table and, with --json, writes the figures as JSON.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def machine() -> str:
  import jax
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      names = [l.split(':', 1)[1].strip() for l in f if l.startswith('model name')]
    cpu = f'{names[0]} x{len(names)}' if names else cpu
  except OSError:
    pass
  return f'{cpu}; jax {jax.__version__} on {jax.devices()[0].platform}'


def bench_data(args) -> dict:
  import numpy as np
  from iai_jax import config_lib
  from iai_jax.data import pipeline, synthetic, tfds_builder

  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    config = config_lib.make_config('synthetic', 'r50')
    with config.unlocked():
      config.dataset.root = tmp
      config.dataset.train_json = 'annotations.json'
      config.dataset.train_frames = 'JPEGImages'
      config.dataset.heldout_fraction = 0.0
      config.input.size = (360, 640)
      config.train.batch_size = args.batch
    t = time.time()
    synthetic.generate(tmp, num_videos=args.videos, num_frames=20, height=360,
                       width=640, max_instances=6, occlusion=0.3, seed=0)
    tfds_builder.build(config, log=lambda *_: None)
    out['prepare_s'] = time.time() - t
    source = tfds_builder.open_split(config, 'train')
    for workers in (0, 2):
      ds = pipeline.training_dataset(config, source, seed=0,
                                     num_workers=workers)
      it = iter(ds)
      next(it)  # start-up (worker processes, first decode)
      t = time.time()
      for _ in range(args.batches):
        batch = next(it)
      dt = time.time() - t
      out[f'clips_per_s_workers{workers}'] = args.batches * args.batch / dt
    out['batch_shapes'] = {k: list(v.shape) for k, v in batch.items()}
  return out


def bench_frame(args) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from iai_jax import config_lib, preprocess, summary
  from iai_jax.models import build_model, empty_memory, init_variables

  config = config_lib.make_config('ytvis19', args.variant)
  h, w = preprocess.padded_size(*config.input.size, config.input.size_divisor)
  model = build_model(config.model)
  variables = init_variables(model, jax.random.key(0))
  frame = jax.jit(summary.frame_function(model, config.model),
                  donate_argnums=(2,))
  memory = empty_memory(config.model, 1, (h, w))
  _, _, pending = summary.frame_inputs(config, model, variables)
  pending = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                   pending)
  pending['valid'] = jnp.asarray(True)  # every frame writes its predecessor
  image = jax.random.normal(jax.random.key(1), (1, h, w, 3))
  t = time.time()
  compiled = frame.lower(variables, image, memory, pending).compile()
  compile_s = time.time() - t
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  times = []
  for i in range(args.frames):
    t = time.time()
    memory, out, cache = frame(variables, image, memory, pending)
    pending['cache'] = cache
    jax.block_until_ready(memory)
    times.append(time.time() - t)
  ms = np.asarray(times) * 1e3
  return {
      'variant': args.variant or 'r50', 'input': f'{h}x{w}',
      'compile_s': compile_s,
      'ms_per_frame_at_10': float(np.median(ms[5:15])),
      'ms_per_frame_last_10': float(np.median(ms[-10:])),
      'gflops_per_frame': float(cost['flops']) / 1e9,
      'achieved_gflops_per_s': float(cost['flops']) / 1e9 / (np.median(ms[5:]) / 1e3),
  }


def bench_train(args) -> dict:
  """Seconds per training step of one 5-frame clip (R50, 192x320 by default)."""
  import functools
  import jax
  import numpy as np
  from iai_jax import config_lib, train, train_state
  from iai_jax.models import build_model, init_variables

  config = config_lib.make_config('ytvis19', args.variant)
  h, w = args.train_size
  with config.unlocked():
    config.input.size = (h, w)
    config.train.batch_size = 1
    if args.bf16:
      config.model.dtype = 'bfloat16'
  t_len, n = config.train.clip_len, config.model.max_obj_num
  rng = np.random.default_rng(0)
  id_map = np.full((1, t_len, h, w), 255, np.uint8)
  box = np.zeros((1, t_len, n, 4), np.float32)
  present = np.zeros((1, t_len, n), bool)
  for k in range(3):  # three instances, moving right
    for t in range(t_len):
      x0, y0 = 20 + 60 * k + 8 * t, 40 + 30 * k
      id_map[0, t, y0:y0 + 60, x0:x0 + 50] = k
      box[0, t, k] = (x0, y0, x0 + 50, y0 + 60)
      present[0, t, k] = True
  id_target = np.where(present, np.arange(n)[None, None], -1).astype(np.int32)
  id_target[0, 0, :3] = n - 1
  masks = id_map[..., None] == np.arange(n)  # (1, T, h, w, n)
  area = np.maximum(masks.sum(axis=(2, 3)), 1e-6)
  center = np.stack([(masks * np.arange(w)[:, None]).sum(axis=(2, 3)) / area,
                     (masks * np.arange(h)[:, None, None]).sum(axis=(2, 3))
                     / area], axis=-1).astype(np.float32)
  batch = {'image': rng.integers(0, 255, (1, t_len, h, w, 3), dtype=np.uint8),
           'image_size': np.broadcast_to(np.asarray([h, w], np.int32),
                                         (1, t_len, 2)),
           'center': center,
           'mask4': np.moveaxis(masks[:, :, 2::4, 2::4], -1, 2).astype(np.uint8),
           'id_map': id_map, 'box': box, 'present': present,
           'label': np.array([[0, 1, 2] + [-1] * (n - 3)], np.int32),
           'id_target': id_target,
           'new_instance': np.array([[True] + [False] * (t_len - 1)])}
  model = build_model(config.model)
  variables = init_variables(model, jax.random.key(0))
  tx, _ = train_state.make_optimizer(config, variables['params'], 1000)
  state = train_state.create_train_state(variables, tx)
  step = jax.jit(functools.partial(train.train_step, model=model, config=config,
                                   tx=tx), donate_argnums=(0,))
  t = time.time()
  compiled = step.lower(state, batch, jax.random.key(1)).compile()
  compile_s = time.time() - t
  times = []
  for _ in range(args.steps):
    t = time.time()
    state, metrics = compiled(state, batch, jax.random.key(1))
    jax.block_until_ready(metrics)
    times.append(time.time() - t)
  steady = float(np.median(times[1:]))
  return {'variant': args.variant or 'r50', 'clip': f'{t_len}x{h}x{w}',
          'dtype': config.model.dtype, 'compile_s': compile_s,
          's_per_step': steady, 'authors_s_per_step': '3.1-3.5',
          'ratio_to_authors': steady / 3.3}


def _rss_mb() -> float:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) / 1024
  return float('nan')


def _results_mb(seg) -> float:
  """MB of RLE strings the video's results hold so far (kept for finish())."""
  masks = getattr(getattr(seg, '_video', None), '_masks', {})
  return sum(len(r['counts']) for per_id in masks.values()
             for r in per_id.values()) / 2 ** 20


def _matmul_gflops() -> float:
  import jax
  import jax.numpy as jnp
  a = jnp.ones((2048, 2048), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  t = time.time()
  for _ in range(10):
    f(a).block_until_ready()
  return 2 * 2048 ** 3 * 10 / (time.time() - t) / 1e9


def bench_infer(args, frames: int, marks, plot: str = '') -> dict:
  """The online loop (OnlineSegmenter.step: device step + host IDs/masks)."""
  import jax
  import numpy as np
  from iai_jax import config_lib, inference
  from iai_jax.models import build_model, init_variables

  config = config_lib.make_config('ytvis19', args.variant)
  if args.bf16:
    with config.unlocked():
      config.model.dtype = 'bfloat16'
  h0, w0 = args.video_size
  model = build_model(config.model)
  variables = init_variables(model, jax.random.key(0))
  seg = inference.OnlineSegmenter(config, variables)
  rng = np.random.default_rng(0)
  video = [rng.integers(0, 255, (h0, w0, 3), dtype=np.uint8) for _ in range(4)]
  t = time.time()
  seg.step(video[0])
  first_s = time.time() - t
  times, rss, rss_series, kept = [], {}, [], {}
  for i in range(1, frames):
    t = time.time()
    seg.step(video[i % 4])
    times.append(time.time() - t)
    if (i + 1) % 10 == 0:
      rss_series.append((i + 1, _rss_mb()))
    if i + 1 in marks or i + 1 in (50, 100):
      rss[i + 1] = _rss_mb()
      kept[i + 1] = _results_mb(seg)
  ms = np.asarray(times) * 1e3
  resized, bucket = inference.inference_size(config, h0, w0)
  lowered = seg._step.lower(seg.variables, seg._memory, seg._prev,
                            np.zeros((*bucket, 3), np.uint8),
                            np.asarray(resized, np.int32))
  cost = lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  gflop = float(cost['flops']) / 1e9
  steady = float(np.median(ms[-min(50, len(ms)):]))
  out = {'variant': args.variant or 'r50', 'dtype': config.model.dtype,
         'video': f'{h0}x{w0} -> {bucket[0]}x{bucket[1]}',
         'first_frame_s (compile)': first_s,
         'compilations': seg.compilations(),
         'ms_per_frame_steady': steady,
         'frames_per_s': 1e3 / steady,
         'gflop_per_frame': gflop,
         'achieved_gflops_per_s': gflop / (steady / 1e3),
         'matmul_gflops_per_s': _matmul_gflops()}
  if frames >= 100:
    # frames 1..100 split in halves (frame 0 is the compile): the second half
    # must cost no more time or memory than the first
    out['ms_frames_1_50'] = float(np.median(ms[:49]))
    out['ms_frames_51_100'] = float(np.median(ms[50:99]))
    out['rss_mb_at_frame_50'] = rss.get(50, float('nan'))
    out['rss_mb_at_frame_100'] = rss.get(100, float('nan'))
    out['results_mb_at_frame_50'] = kept.get(50, float('nan'))
  for m in marks:
    if m <= frames:
      lo = max(0, m - 6)
      out[f'ms_at_frame_{m}'] = float(np.median(ms[lo:m - 1]))
      out[f'rss_mb_at_frame_{m}'] = rss.get(m, float('nan'))
      out[f'results_mb_at_frame_{m}'] = kept.get(m, float('nan'))
  if plot:
    plot_series(plot, ms, rss_series,
                f'{out["variant"]} {out["video"]}, {machine()}')
    out['plot'] = plot
  return out


def plot_series(path: str, ms, rss_series, title: str):
  """PNG of ms/frame (frames 2..N) and process RSS against the frame index."""
  import numpy as np
  from PIL import Image, ImageDraw

  img = Image.new('RGB', (900, 620), 'white')
  draw = ImageDraw.Draw(img)
  draw.text((70, 8), title, fill='black')
  n = len(ms) + 1
  panels = [('ms per frame', np.arange(2, n + 1), np.asarray(ms), (40, 290)),
            ('process RSS (MB)', np.array([f for f, _ in rss_series]),
             np.array([r for _, r in rss_series]), (340, 590))]
  left, right = 70, 880
  for name, xs, ys, (top, bottom) in panels:
    if len(xs) == 0:
      continue
    lo, hi = 0.0, float(np.percentile(ys, 99.5)) * 1.15 or 1.0
    if name.startswith('process'):
      lo, hi = float(ys.min()) * 0.9, float(ys.max()) * 1.1
    draw.rectangle((left, top, right, bottom), outline='black')
    draw.text((left, top - 14), name, fill='black')
    for k in range(5):
      v = lo + (hi - lo) * k / 4
      y = bottom - (bottom - top) * k / 4
      draw.line((left - 4, y, left, y), fill='black')
      draw.text((4, y - 6), f'{v:7.1f}', fill='black')
    for k in range(6):
      f = 1 + (n - 1) * k / 5
      x = left + (right - left) * k / 5
      draw.line((x, bottom, x, bottom + 4), fill='black')
      draw.text((x - 10, bottom + 6), f'{int(f)}', fill='black')
    px = left + (right - left) * (xs - 1) / max(1, n - 1)
    py = bottom - (bottom - top) * (np.clip(ys, lo, hi) - lo) / (hi - lo)
    draw.line(list(zip(px.tolist(), py.tolist())), fill=(31, 119, 180), width=1)
  draw.text((left + 330, 604), 'frame index', fill='black')
  img.save(path)


def _write_test_video(path: str, frames: int, h: int, w: int, fps: int = 25):
  """An H.264 video of coloured squares moving over a checkerboard, written
  frame by frame."""
  import imageio.v2 as imageio
  import numpy as np
  yy, xx = np.mgrid[0:h, 0:w]
  board = (((xx // 40 + yy // 40) % 2) * 60 + 60).astype(np.uint8)
  board = np.repeat(board[..., None], 3, axis=2)
  colours = [(220, 40, 40), (40, 200, 60), (40, 80, 230), (230, 200, 30)]
  writer = imageio.get_writer(path, fps=fps, macro_block_size=1)
  for f in range(frames):
    img = board.copy()
    for k, colour in enumerate(colours):
      side = h // (4 + k)
      x0 = (f * (4 + 2 * k) + k * w // 4) % (w - side)
      y0 = (f * (2 + k) + k * h // 5) % (h - side)
      img[y0:y0 + side, x0:x0 + side] = colour
    writer.append_data(img)
  writer.close()


_PEAK = ('import resource, subprocess, sys, time\n'
         't = time.time()\n'
         'rc = subprocess.run(sys.argv[1:]).returncode\n'
         'print("PEAK", rc, time.time() - t, '
         'resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n')


def bench_predict(args) -> dict:
  """``--mode=predict`` (decode, run, draw, encode) over a short and a long
  video of the same size, each in a fresh process: peak RSS and time.

  The model is the synthetic config's tiny one with random weights and
  every threshold at 0, so each frame has the most detections the model
  gives (ID slots full): the results kept until the end are as large as
  they get.
  """
  import subprocess

  import jax
  from iai_jax import checkpoints, config_lib
  from iai_jax.models import build_model, init_variables

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  h, w = args.video_size
  spec = os.path.join(repo, 'configs', 'synthetic.py')
  config = config_lib.load_config_file(spec)
  tmp = tempfile.mkdtemp(prefix='iai_predict_bench_')
  ckpt = os.path.join(tmp, 'ckpt')
  variables = init_variables(build_model(config.model), jax.random.key(0))
  checkpoints.save_variables(ckpt, jax.device_get(variables),
                             {'source': 'benchmark: random init'})
  out = {'config': 'configs/synthetic.py (tiny), random weights, '
                   'score/id/video thresholds 0',
         'video': f'{h}x{w} H.264, 25 fps'}
  env = dict(os.environ, PYTHONPATH=repo + os.pathsep
             + os.environ.get('PYTHONPATH', ''))
  for frames in args.predict_frames:
    video = os.path.join(tmp, f'in_{frames}.mp4')
    _write_test_video(video, frames, h, w)
    cmd = [sys.executable, '-c', _PEAK, sys.executable, '-m', 'iai_jax.main',
           '--mode=predict', f'--config={spec}', f'--checkpoint={ckpt}',
           f'--input={video}', f'--output={os.path.join(tmp, f"out_{frames}")}',
           '--config.infer.score_thr=0.0', '--config.infer.id_thr=0.0',
           '--config.infer.video_score_thr=0.0']
    run = subprocess.run(cmd, capture_output=True, text=True, env=env,
                         cwd=repo)
    peak = [l for l in run.stdout.splitlines() if l.startswith('PEAK ')]
    if not peak or peak[-1].split()[1] != '0':
      raise RuntimeError(f'predict on {frames} frames failed:\n'
                         f'{run.stdout[-2000:]}\n{run.stderr[-3000:]}')
    _, _, seconds, kb = peak[-1].split()
    log = [l for l in run.stdout.splitlines() if 'frames/s' in l]
    results = json.load(open(os.path.join(tmp, f'out_{frames}',
                                          'results.json')))
    out[f'frames_{frames}_peak_rss_mb'] = int(kb) / 1024
    out[f'frames_{frames}_wall_s'] = float(seconds)
    out[f'frames_{frames}_log'] = log[-1] if log else ''
    out[f'frames_{frames}_tracks'] = len(results)
    out[f'frames_{frames}_results_json_mb'] = os.path.getsize(os.path.join(
        tmp, f'out_{frames}', 'results.json')) / 2 ** 20
  lo, hi = min(args.predict_frames), max(args.predict_frames)
  out['peak_rss_long_vs_short'] = (out[f'frames_{hi}_peak_rss_mb']
                                   / out[f'frames_{lo}_peak_rss_mb'] - 1)
  import shutil
  shutil.rmtree(tmp, ignore_errors=True)
  return out


WHAT = ('data', 'frame', 'train', 'infer', 'memory', 'predict', 'all')
flags.DEFINE_list('video_size', ['360', '640'], 'infer/memory: H,W of the video.')
flags.DEFINE_integer('infer_frames', 100, 'infer: frames of the video.')
flags.DEFINE_integer('memory_frames', 1000, 'memory: frames of the video.')
flags.DEFINE_list('predict_frames', ['100', '1000'], 'predict: frame counts '
                  'of the videos (each run in its own process).')
flags.DEFINE_integer('steps', 6, 'train: timed steps.')
flags.DEFINE_list('train_size', ['192', '320'], 'train: H,W of the clip.')
flags.DEFINE_bool('bf16', False, 'train: bfloat16 compute.')
flags.DEFINE_string('json', '', 'Also write the figures to this JSON file.')
flags.DEFINE_integer('videos', 12, 'data: videos of the temporary dataset.')
flags.DEFINE_integer('batch', 4, 'data: clips a batch.')
flags.DEFINE_integer('batches', 10, 'data: timed batches.')
flags.DEFINE_integer('frames', 30, 'frame: timed frames.')
flags.DEFINE_string('variant', '', 'Config variants of ytvis19 (e.g. bf16).')
flags.DEFINE_string('plot', '', 'memory: PNG of ms/frame and RSS against '
                    'the frame index.')


def main(argv):
  if len(argv) != 2 or argv[1] not in WHAT:
    raise app.UsageError(f'usage: benchmark.py {{{"|".join(WHAT)}}} [--flags]')
  import types
  names = ('infer_frames', 'memory_frames', 'steps', 'bf16', 'json', 'videos',
           'batch', 'batches', 'frames', 'variant', 'plot')
  args = types.SimpleNamespace(
      what=argv[1], **{k: flags.FLAGS[k].value for k in names},
      video_size=tuple(int(x) for x in flags.FLAGS.video_size),
      predict_frames=[int(x) for x in flags.FLAGS.predict_frames],
      train_size=tuple(int(x) for x in flags.FLAGS.train_size))
  result = {'machine': machine(), 'date': time.strftime('%Y-%m-%d')}
  if args.what in ('data', 'all'):
    result['data'] = bench_data(args)
  if args.what in ('train', 'all'):
    result['train'] = bench_train(args)
  if args.what in ('infer', 'all'):
    result['infer'] = bench_infer(args, args.infer_frames, (10, 100))
  if args.what in ('memory', 'all'):
    result['memory'] = bench_infer(args, args.memory_frames, (10, 100, 1000),
                                   plot=args.plot)
  if args.what in ('frame', 'all'):
    result['frame'] = bench_frame(args)
  if args.what == 'predict':  # minutes of video encoding: not in 'all'
    result['predict'] = bench_predict(args)
  for section, figures in result.items():
    if isinstance(figures, dict):
      print(f'[{section}]')
      for k, v in figures.items():
        print(f'  {k:<28} {v:.2f}' if isinstance(v, float) else f'  {k:<28} {v}')
    else:
      print(f'{section}: {figures}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  app.run(main)
