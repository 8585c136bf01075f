"""Speed and memory record of iai_jax (the tests run only ``device``, small).

  python scripts/benchmark.py data  [--json=OUT.json]
  python scripts/benchmark.py frame [--json=OUT.json]
  python scripts/benchmark.py train [--authors_python=PY --authors_src=DIR]
  python scripts/benchmark.py infer [--authors_python=PY --authors_src=DIR]
  python scripts/benchmark.py stages [--authors_python=PY --authors_src=DIR]
  python scripts/benchmark.py memory [--plot=PNG]
  python scripts/benchmark.py device [--json=device_check.json]
  python scripts/benchmark.py export [--export_platforms='cpu;cpu,cuda']
  python scripts/benchmark.py predict --video_size=720,1280 [--json=OUT.json]
  python scripts/benchmark.py all

data:   training clips per second from TFDS records at 640x360 (a synthetic
        dataset of 640x360 videos is generated and converted in a temp dir),
        with the loader in this process and with worker processes.
frame:  the network's per-frame step (backbone, association with the memory,
        FPN, heads, memory write) streaming one 360x640 frame at a time with
        ResNet-50: compile time, ms per frame at frames 10 and 100, and
        GFLOP/s achieved (XLA cost analysis).
train:  seconds per training step of one 5-frame clip (R50, 192x320).
infer:  the online loop (OnlineSegmenter.step) on a 360x640 video.
stages: where the time goes: the online frame's pieces (backbone,
        association, memory write, FPN, head, mask branch, post-processing,
        host) and the training step's (forward, backward, optimiser; the
        forward's backbone, scan, decode, losses), each jitted on its own;
        with --authors_python, next to the authors' harness's own breakdown,
        alternated --rounds times (--json also gets the markdown table).
memory: the online loop over 1,000 frames: time and RSS against the frame.
predict: python -m iai_jax.main --mode=predict over a 100- and a 1,000-frame
        video (--video_size=720,1280 for 720p), each in a fresh process: peak
        RSS (memory must not grow with the video) and wall time.
device: the one-command accelerator check (GPU/TPU: at most 6 minutes;
        CPU: the tiny config at small sizes, so the tests run it), one JSON:
        the tests marked ``accelerator`` (a pytest subprocess), R50 360x640
        streaming ms/frame and FPS in fp32 and bf16 (whole loop and device
        step alone), frame 1,000 against frame 10, the training step with
        one clip a device and with the largest batch that fits, compile
        times, peak device memory (``memory_stats()``; RSS on CPU).
export: python -m iai_jax.export on random R50 weights: the artifact's size
        and, in a fresh serving-only process, its load time, first frame
        (compile) and ms/frame.

Ratios to the authors come only from their code run beside ours in the same
run: ``train`` and ``infer`` with ``--authors_python`` (their venv's python)
and ``--authors_src`` (the exported zfonemore/IAI tree) alternate our timed
steps with the authors' harness (``--authors_harness``, default
../shared/tools/authors-reference/iai_peer.py: ``--train-step`` /
``--bench``) ``--rounds`` times and print the ratio of the medians.

Prints the figures and, with --json, writes them as JSON.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


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


def synthetic_clip_batch(config, batch: int, h: int, w: int) -> dict:
  """``batch`` copies of one synthetic training clip of ``train.clip_len``
  h x w frames: three rectangles moving right (at 192x320 the boxes of the
  earlier records of this file; scaled with the frame otherwise)."""
  import numpy as np
  t_len, n = config.train.clip_len, config.model.max_obj_num
  sy, sx = h / 192, w / 320
  rng = np.random.default_rng(0)
  id_map = np.full((1, t_len, h, w), 255, np.uint8)
  box = np.zeros((1, t_len, n, 4), np.float32)
  present = np.zeros((1, t_len, n), bool)
  for k in range(3):  # three instances, moving right
    for t in range(t_len):
      x0, y0 = round((20 + 60 * k + 8 * t) * sx), round((40 + 30 * k) * sy)
      x1, y1 = min(w, x0 + max(2, round(50 * sx))), min(h, y0 + max(2, round(60 * sy)))
      id_map[0, t, y0:y1, x0:x1] = k
      box[0, t, k] = (x0, y0, x1, y1)
      present[0, t, k] = True
  id_target = np.where(present, np.arange(n)[None, None], -1).astype(np.int32)
  id_target[0, 0, :3] = n - 1
  masks = id_map[..., None] == np.arange(n)  # (1, T, h, w, n)
  area = np.maximum(masks.sum(axis=(2, 3)), 1e-6)
  center = np.stack([(masks * np.arange(w)[:, None]).sum(axis=(2, 3)) / area,
                     (masks * np.arange(h)[:, None, None]).sum(axis=(2, 3))
                     / area], axis=-1).astype(np.float32)
  one = {'image': rng.integers(0, 255, (1, t_len, h, w, 3), dtype=np.uint8),
         'image_size': np.broadcast_to(np.asarray([h, w], np.int32),
                                       (1, t_len, 2)),
         'center': center,
         'mask4': np.moveaxis(masks[:, :, 2::4, 2::4], -1, 2).astype(np.uint8),
         'id_map': id_map, 'box': box, 'present': present,
         'label': np.array([[0, 1, 2] + [-1] * (n - 3)], np.int32),
         'id_target': id_target,
         'new_instance': np.array([[True] + [False] * (t_len - 1)])}
  return {k: np.ascontiguousarray(np.repeat(v, batch, axis=0))
          for k, v in one.items()}


def random_variables(model, seed: int = 0):
  """Random variables of the model's shapes without compiling its init
  (which takes a minute on a busy CPU): kernels N(0, 1/fan_in); norm and
  box scales, BatchNorm variances, GCT alpha 1; biases, BatchNorm means,
  GCT gamma and beta 0. Speed does not depend on the values."""
  import jax
  import numpy as np
  from iai_jax.models import abstract_variables
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = str(getattr(path[-1], 'key', path[-1]))
    if name in ('scale', 'scales', 'var', 'alpha'):
      return np.ones(s.shape, s.dtype)
    if len(s.shape) < 2 or name.endswith('bias') or name in ('mean', 'beta',
                                                             'gamma'):
      return np.zeros(s.shape, s.dtype)
    fan_in = int(np.prod(s.shape[:-1]))
    return (rng.standard_normal(s.shape) / np.sqrt(fan_in)).astype(s.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract_variables(model))


def train_step_runner(config, batch_per_device: int, variables=None):
  """(compiled step, state, batch, compile seconds): the training step of
  ``batch_per_device`` clips on every local device (the batch sharded over
  the mesh axis 'data', as training does)."""
  import functools
  import jax
  from iai_jax import train, train_state
  from iai_jax.models import build_model

  h, w = config.input.size
  n_dev = jax.device_count()
  model = build_model(config.model)
  if variables is None:
    variables = random_variables(model)
  tx, _ = train_state.make_optimizer(config, variables['params'], 1000)
  state = train_state.create_train_state(variables, tx)
  mesh = train.make_mesh(config)
  state_sh, batch_sh, repl = train.shardings(mesh, state)
  state = jax.device_put(state, state_sh)
  batch = train.global_batch(
      synthetic_clip_batch(config, batch_per_device * n_dev, h, w), batch_sh)
  step = jax.jit(functools.partial(train.train_step, model=model,
                                   config=config, tx=tx),
                 in_shardings=(state_sh, batch_sh, repl),
                 out_shardings=(state_sh, repl), donate_argnums=(0,))
  t = time.time()
  compiled = step.lower(state, batch, jax.random.key(1)).compile()
  return compiled, state, batch, time.time() - t


def time_train_steps(compiled, state, batch, steps: int):
  """Seconds of each of ``steps`` steps (the state is donated and replaced)."""
  import jax
  times = []
  for _ in range(steps):
    t = time.time()
    state, metrics = compiled(state, batch, jax.random.key(1))
    jax.block_until_ready(metrics)
    times.append(time.time() - t)
  return times, state


def one_clip_config(args):
  """ytvis19 (+ --variant) for one clip of --train_size on one device
  (bfloat16 with --bf16)."""
  from iai_jax import config_lib
  config = config_lib.make_config('ytvis19', args.variant)
  with config.unlocked():
    config.input.size = tuple(args.train_size)
    config.train.batch_size = 1
    config.train.mesh_shape = (1,)
    if getattr(args, 'bf16', False):
      config.model.dtype = 'bfloat16'
  return config


def bench_train(args) -> dict:
  """Seconds per training step of one 5-frame clip (R50, 192x320 by default);
  with --authors_python, alternated with the authors' --train-step."""
  import jax
  import numpy as np
  from iai_jax.models import build_model, init_variables

  config = one_clip_config(args)
  h, w = args.train_size
  model = build_model(config.model)
  compiled, state, batch, compile_s = train_step_runner(
      config, 1, init_variables(model, jax.random.key(0)))

  def ours():
    nonlocal state
    times, state = time_train_steps(compiled, state, batch, args.steps)
    return float(np.median(times[1:] if len(times) > 1 else times))

  out = {'variant': args.variant or 'r50',
         'clip': f'{config.train.clip_len}x{h}x{w}',
         'dtype': config.model.dtype, 'compile_s': compile_s}
  if args.authors_python:
    out.update(side_by_side(
        ours, authors_command(args, ['--train-step', '--train-size',
                                     f'{h}x{w}', '--train-steps',
                                     str(args.steps)]),
        lambda r: r['train']['step_ms_median'] / 1e3, args.rounds,
        'train step', 's'))
  else:
    out['s_per_step'] = ours()
  return out


# ----------------------------------------------------------------- authors
def authors_command(args, mode: list) -> list:
  """The authors' harness (their PyTorch code, run from their venv) for
  ``mode``; it writes its figures to the JSON file appended last."""
  harness = os.path.abspath(args.authors_harness)
  if not os.path.isfile(harness):
    raise app.UsageError(f'--authors_harness={harness} does not exist')
  if not os.path.isdir(args.authors_src or ''):
    raise app.UsageError(f'--authors_src={args.authors_src!r} is not a folder '
                         'holding the exported zfonemore/IAI tree')
  return [args.authors_python, harness, '--src', args.authors_src,
          '--threads', str(args.authors_threads), *mode, '--bench-json']


def run_authors(command: list, log=print) -> dict:
  """Runs the harness once; its JSON."""
  import subprocess
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'authors.json')
    r = subprocess.run(command + [out], capture_output=True, text=True)
    if r.returncode != 0 or not os.path.exists(out):
      tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ['no output']
      raise RuntimeError(f'the authors\' harness failed ({r.returncode}): '
                         f'{tail[0]}')
    with open(out) as f:
      return json.load(f)


def side_by_side(ours, command, figure, rounds: int, what: str, unit: str,
                 log=print, run=run_authors) -> dict:
  """Ours and the authors', alternated ``rounds`` times in one run.

  ``ours()`` returns our figure for one round (it is compiled beforehand:
  only steady state is compared); ``figure(json)`` picks theirs from the
  harness's JSON. Returns both series, their medians and the ratio of the
  medians (ours / theirs: below 1 is faster).
  """
  import numpy as np
  mine, theirs = [], []
  for r in range(rounds):
    mine.append(float(ours()))
    theirs.append(float(figure(run(command))))
    log(f'[{what}] round {r + 1}/{rounds}: iai_jax {mine[-1]:.3f} {unit}, '
        f'authors {theirs[-1]:.3f} {unit}')
  m, t = float(np.median(mine)), float(np.median(theirs))
  log(f'[{what}] median iai_jax {m:.3f} {unit}, authors {t:.3f} {unit}: '
      f'ratio {m / t:.2f}')
  return {f'iai_jax_{unit}': mine, f'authors_{unit}': theirs,
          f'iai_jax_median_{unit}': m, f'authors_median_{unit}': t,
          'ratio_of_medians': m / t, 'rounds': rounds,
          'authors_command': ' '.join(command[:-1])}


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
             for r in per_id if r is not None) / 2 ** 20


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


def bench_infer(args, frames: int, marks, plot: str = '',
                authors: bool = False) -> dict:
  """The online loop (OnlineSegmenter.step: device step + host IDs/masks);
  with ``authors`` (--authors_python), rounds of ``--round_frames`` more
  frames alternated with the authors' --bench (their streaming estimate:
  one frame's backbone + its per-frame loop)."""
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
                            np.asarray(resized, np.int32), seg._scale)
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
  if authors:
    def ours():
      ts = []
      for i in range(args.round_frames):
        t = time.time()
        seg.step(video[i % 4])
        ts.append(time.time() - t)
      return float(np.median(ts)) * 1e3

    out['side_by_side'] = side_by_side(
        ours, authors_command(args, ['--bench', '--bench-sizes',
                                     f'{h0}x{w0}']),
        lambda r: r['bench'][0]['streaming_estimate_ms_per_frame'],
        args.rounds, 'online frame', 'ms')
  if plot:
    plot_series(plot, ms, rss_series,
                f'{out["variant"]} {out["video"]}, {machine()}')
    out['plot'] = plot
  return out



# ----------------------------------------------------------------- stages
def _median_ms(fn, repeats: int) -> float:
  """Median wall ms of ``fn()`` (its outputs waited for) after one warm-up
  call, which compiles."""
  import jax
  import numpy as np
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return float(np.median(times)) * 1e3


def stages_online(args) -> dict:
  """Ours, one 360x640 frame (R50, random weights): each piece of the
  online step jitted on its own, the whole device step, and the whole
  ``OnlineSegmenter.step`` (device step + host: IDs, masks at the frame's
  size, results)."""
  import functools
  import jax
  import jax.numpy as jnp
  import numpy as np
  from iai_jax import config_lib, inference, postprocess, preprocess
  from iai_jax.models import build_model, rollout

  config = config_lib.make_config('ytvis19', args.variant)
  model = build_model(config.model)
  variables = jax.device_put(random_variables(model))
  h0, w0 = args.video_size
  resized, padded = inference.inference_size(config, h0, w0)
  n = config.model.max_obj_num
  rng = np.random.default_rng(0)
  raw = rng.integers(0, 255, (*padded, 3), dtype=np.uint8)
  image_size = jnp.asarray(resized, jnp.int32)
  scale = jnp.asarray([resized[1] / w0, resized[0] / h0] * 2, jnp.float32)
  apply = lambda f: jax.jit(lambda v, *a: model.apply(v, *a, method=f))

  normalize = jax.jit(lambda im, size: preprocess.normalize(
      im[None], size[None], config.input))
  x = normalize(raw, image_size)
  encode = apply(lambda m, im: m.encode(im))
  feats = encode(variables, x)
  memory = rollout.empty_memory(config.model, 1, padded)
  associate = apply(lambda m, c5, mem: m.associate(c5, mem, True))
  c5p, cache = associate(variables, feats['c5'], memory)
  d = 100
  masks = jnp.asarray(rng.random((d, *padded)) < 0.01)
  ids = jnp.asarray(np.arange(d) % (n + 2) - 2, jnp.int32)
  id_mask = jax.jit(lambda m, i: postprocess.id_mask(m, i, n)[None])
  write = apply(lambda m, mem, c, idm, new: m.write_memory(mem, c, idm, new))
  fpn = apply(lambda m, c3, c4, c5: m.fpn([c3, c4, c5]))
  levels = fpn(variables, feats['c3'], feats['c4'], c5p)
  head = apply(lambda m, f: m.head(f))
  mask_branch = apply(lambda m, f: m.mask_branch(f[:3], train=False))
  out = dict(head(variables, levels))
  out['mask_feats'] = mask_branch(variables, levels)
  first = jnp.asarray(False)
  detect = jax.jit(functools.partial(inference.detections, padded=padded,
                                     config=config))
  r = args.frames
  ms = {
      'normalise': _median_ms(lambda: normalize(raw, image_size), r),
      'backbone': _median_ms(lambda: encode(variables, x), r),
      'association (projector, LSTT)': _median_ms(
          lambda: associate(variables, feats['c5'], memory), r),
      'ID mask + memory write (ID bank)': _median_ms(
          lambda: write(variables, memory, cache, id_mask(masks, ids),
                        jnp.zeros((1,), bool)), r),
      'FPN': _median_ms(lambda: fpn(variables, feats['c3'], feats['c4'],
                                    c5p), r),
      'head towers + predictors': _median_ms(
          lambda: head(variables, levels), r),
      'mask branch': _median_ms(lambda: mask_branch(variables, levels), r),
      'post-processing (candidates, NMS, masks)': _median_ms(
          lambda: detect(out, image_size, scale, first), r),
  }
  seg = inference.OnlineSegmenter(config, variables)
  video = [rng.integers(0, 255, (h0, w0, 3), dtype=np.uint8)
           for _ in range(4)]
  seg.step(video[0])
  step_ms = []
  for i in range(r):
    t = time.perf_counter()
    seg.step(video[(i + 1) % 4])
    step_ms.append((time.perf_counter() - t) * 1e3)
  device = seg._step
  state = (seg.variables, seg._memory, seg._prev,
           np.zeros((*padded, 3), np.uint8), np.asarray(resized, np.int32),
           seg._scale)
  ms['device step, whole'] = _median_ms(lambda: device(*state), r)
  ms['OnlineSegmenter.step, whole'] = float(np.median(step_ms))
  ms['host (IDs, masks at frame size, results)'] = (
      ms['OnlineSegmenter.step, whole'] - ms['device step, whole'])
  return {'video': f'{h0}x{w0} -> {padded[0]}x{padded[1]}', 'repeats': r,
          'ms': ms}


def stages_train(args) -> dict:
  """Ours, one 5-frame clip (R50, --train_size): the forward (losses
  included), forward + backward, and the whole step with the optimiser;
  the forward's pieces jitted on their own."""
  import functools
  import jax
  import numpy as np
  from iai_jax import preprocess, targets as targets_lib, train
  from iai_jax import losses as losses_lib
  from iai_jax.models import build_model, kernels, locations, rollout

  config = one_clip_config(args)
  h, w = args.train_size
  model = build_model(config.model)
  compiled, state, batch, _ = train_step_runner(config, 1)
  rng = jax.random.key(1)
  p, bs = state.params, state.batch_stats
  loss = jax.jit(functools.partial(train.clip_loss, model, config=config))
  grad = jax.jit(jax.value_and_grad(
      lambda p, bs, b, k: train.clip_loss(model, p, bs, b, k, config),
      has_aux=True))
  r = args.steps
  ms = {'forward (losses included)': _median_ms(
      lambda: loss(p, bs, batch, rng), r)}
  ms['forward + backward'] = _median_ms(lambda: grad(p, bs, batch, rng), r)
  times, state = time_train_steps(compiled, state, batch, r + 1)
  ms['whole step (+ optimiser)'] = float(np.median(times[1:])) * 1e3
  # the forward's pieces
  v = {'params': state.params, 'batch_stats': state.batch_stats}
  n = config.model.max_obj_num
  t_len = batch['image'].shape[1]
  norm = jax.jit(lambda b: preprocess.normalize(b['image'], b['image_size'],
                                                config.input))
  images = norm(batch)
  flat = images.reshape(-1, *images.shape[2:])
  encode = jax.jit(lambda v, im: model.apply(
      v, im, method=lambda m, im: m.encode(im)))
  feats = encode(v, flat)

  def scan(v, c5, b):
    net = rollout.Applied(model, v)
    memory = rollout.empty_memory(config.model, 1, images.shape[2:4])

    def cell(mem, xs):
      c5_t, id_t = xs
      c5p, cache = net.associate(c5_t, mem, False, rng)
      mem = net.write_memory(mem, cache,
                             targets_lib.id_mask_from_map(id_t, n),
                             np.zeros((1,), bool))
      return mem, c5p
    return jax.lax.scan(cell, memory, (c5.reshape(t_len, 1, *c5.shape[1:]),
                                       b['id_map'].swapaxes(0, 1)),
                        unroll=kernels.scan_unroll(config.train.scan_unroll))[1]
  scan = jax.jit(scan)
  c5p = scan(v, feats['c5'], batch).reshape(feats['c5'].shape[0], *feats[
      'c5'].shape[1:3], -1)
  decode = jax.jit(lambda v, c3, c4, c5p: model.apply(
      v, c3, c4, c5p, True, t_len, method=lambda m, *a: m.decode(*a),
      mutable=['batch_stats'])[0])
  out = decode(v, feats['c3'], feats['c4'], c5p)

  def loss_only(out, b, key):
    tg = targets_lib.batch_targets(targets_lib.clip_ground_truth(b),
                                   shapes=locations.output_level_shapes(out))
    return losses_lib.iai_losses(out, tg, time_steps=t_len,
                                 max_mask_samples=config.train.max_mask_samples,
                                 key=key)['total']
  loss_only = jax.jit(loss_only)
  ms['  backbone (5 frames)'] = _median_ms(lambda: encode(v, flat), r)
  ms['  association scan (5 steps)'] = _median_ms(
      lambda: scan(v, feats['c5'], batch), r)
  ms['  FPN + heads + mask branch (5 frames)'] = _median_ms(
      lambda: decode(v, feats['c3'], feats['c4'], c5p), r)
  ms['  targets + losses'] = _median_ms(lambda: loss_only(out, batch, rng), r)
  return {'clip': f'1x{t_len}x{h}x{w}', 'repeats': r, 'ms': ms}


# the authors' harness's figures (--bench, --train-step) mapped onto our rows
def _authors_online(r: dict) -> dict:
  comp = lambda c: r['component_ms_median'].get(c, 0.0)
  return {
      'backbone': r['backbone_single_frame_ms_median'],
      'association (projector, LSTT)': comp('lstt'),
      'ID mask + memory write (ID bank)': comp('mem_update'),
      'FPN': comp('neck'),
      'head towers + predictors': comp('head_fwd'),  # mask branch inside
      'post-processing (candidates, NMS, masks)': (comp('head_total')
                                                   - comp('head_fwd')),
      'OnlineSegmenter.step, whole': r['streaming_estimate_ms_per_frame'],
      # their loop minus its timed parts: projectors, RLE, score lists
      'host (IDs, masks at frame size, results)': (
          r['loop_ms_per_frame_median_all'] - comp('lstt')
          - comp('mem_update') - comp('neck') - comp('head_total')),
  }


def _authors_train(r: dict) -> dict:
  # their step is forward + backward; no optimiser in the harness
  return {'forward (losses included)': r['fwd_ms_median'],
          'forward + backward': r['step_ms_median']}


STAGE_PARTS = {'online': ('online frame', _authors_online),
               'train': ('training step', _authors_train)}


def stages_table(rounds: list) -> dict:
  """Median over the rounds of each stage, ours and (where the rounds have
  them) the authors', with the ratio ours / theirs."""
  import numpy as np
  table = {}
  for part, (title, theirs) in STAGE_PARTS.items():
    if f'ours_{part}' not in rounds[0]:
      continue
    rows = table[title] = {}
    for key in rounds[0][f'ours_{part}']['ms']:
      rows[key] = {'iai_jax_ms': float(np.median(
          [r[f'ours_{part}']['ms'][key] for r in rounds]))}
    if f'authors_{part}' in rounds[0]:
      for key in theirs(rounds[0][f'authors_{part}']):
        ms = float(np.median([theirs(r[f'authors_{part}'])[key]
                              for r in rounds]))
        rows[key]['authors_ms'] = ms
        if ms > 0:
          rows[key]['ratio'] = rows[key]['iai_jax_ms'] / ms
  return table


def bench_stages(args, log=print) -> dict:
  """Where the time goes, ours next to the authors' (their harness's own
  breakdown) when --authors_python is given: the online frame and the
  training step (--stages_parts), ours and theirs alternated --rounds
  times."""
  h0, w0 = args.video_size
  h, w = args.train_size
  authors = {
      'online': ['--bench', '--bench-sizes', f'{h0}x{w0}'],
      'train': ['--train-step', '--train-size', f'{h}x{w}', '--train-steps',
                str(args.steps)]}
  ours = {'online': stages_online, 'train': stages_train}
  rounds = []
  for k in range(args.rounds):
    one = {}
    for part in args.stages_parts:
      one[f'ours_{part}'] = ours[part](args)
      log(f'[stages] round {k + 1}/{args.rounds}: ours, {part}')
      if args.authors_python:
        r = run_authors(authors_command(args, authors[part]))
        one[f'authors_{part}'] = r['bench'][0] if part == 'online' else r[
            'train']
        log(f'[stages] round {k + 1}/{args.rounds}: authors, {part}')
    rounds.append(one)
  return {'online': f'{h0}x{w0}', 'train': f'1x5x{h}x{w}',
          'rounds': args.rounds, 'table': stages_table(rounds),
          'per_round': rounds, 'matmul_gflops_per_s': _matmul_gflops()}


def stages_markdown(result: dict) -> str:
  """The table for BENCHMARKS.md."""
  lines = ['| stage | iai_jax ms | authors ms | ratio |', '|---|---:|---:|---:|']
  for part, rows in result['table'].items():
    lines.append(f'| **{part}** | | | |')
    for key, row in rows.items():
      name = key.strip() + (' (part of the forward)'
                            if key.startswith('  ') else '')
      theirs = row.get('authors_ms')
      theirs = '-' if theirs is None else f'{theirs:.0f}'
      ratio = f'{row["ratio"]:.2f}' if 'ratio' in row else '-'
      lines.append(f'| {name} | {row["iai_jax_ms"]:.0f} | {theirs} | '
                   f'{ratio} |')
  return '\n'.join(lines)

# ----------------------------------------------------------------- device
PAPER_FPS = 32.8  # the paper's R50 online speed on one RTX A6000
TARGET_BF16_FPS = 200  # issue 18: on one H100/H200-class GPU


# the parts of the device check (--device_parts)
PARTS = {'tests': 'tests', 'float32': 'fp32', 'bfloat16': 'bf16',
         'train': 'train'}


class Deadline:
  """The device check's time budget: parts that would not fit are skipped
  and say so."""

  def __init__(self, seconds: float):
    self.start = time.time()
    self.end = self.start + seconds

  def left(self) -> float:
    return self.end - time.time()

  def allows(self, seconds: float) -> bool:
    return self.left() >= seconds


def device_memory() -> dict | None:
  """The first local device's allocator figures (None where jax has none,
  as on CPU)."""
  import jax
  stats = jax.local_devices()[0].memory_stats()
  if not stats:
    return None
  keys = ('bytes_in_use', 'peak_bytes_in_use', 'bytes_limit')
  return {k: int(stats[k]) for k in keys if k in stats}


def _peak_rss_mb() -> float:
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_marked_tests(mode: str, select: str, timeout: float) -> dict:
  """The tests marked ``accelerator``, in a pytest subprocess: ``run``
  them, ``collect`` (list them only) or ``skip``."""
  import re
  import subprocess
  if mode == 'skip':
    return {'skipped': 'not run (--device_tests=skip or not in --device_parts)'}
  cmd = [sys.executable, '-m', 'pytest', '-q', '-m', 'accelerator',
         '-p', 'no:cacheprovider', os.path.join(ROOT, 'tests')]
  if mode == 'collect':
    cmd.append('--collect-only')
  if select:
    cmd += ['-k', select]
  env = dict(os.environ)
  # the check's own process has not taken the device yet; the tests'
  # subprocesses each take what they need
  env['XLA_PYTHON_CLIENT_PREALLOCATE'] = 'false'
  env['PYTHONPATH'] = os.pathsep.join(
      [ROOT, os.path.join(ROOT, 'tests')]
      + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
  t = time.time()
  try:
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout)
    out, code = r.stdout, r.returncode
  except subprocess.TimeoutExpired as e:
    out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or '')
    code = 'timeout'
  lines = [l for l in out.strip().splitlines() if l.strip()]
  summary = lines[-1].strip('= ') if lines else ''
  counts = {k: int(n) for n, k in re.findall(
      r'(\d+) (passed|failed|errors?|skipped|deselected|collected)', summary)}
  result = {'command': ' '.join(cmd[1:]), 'returncode': code,
            'seconds': time.time() - t, 'summary': summary, **counts,
            'failures': [l for l in lines if l.startswith(('FAILED', 'ERROR'))]}
  if mode == 'collect':
    result['tests'] = [l for l in lines if '::' in l]
  return result


def stream(config, variables, video, frames: int, step_frames: int) -> dict:
  """The online loop over ``frames`` frames of ``video`` (repeated):
  compile (first frame), ms/frame of the whole loop (device step, IDs,
  output masks, RLE) and of the device step alone, frame 10 against the
  last frames, device memory."""
  import jax
  import numpy as np
  from iai_jax import inference

  seg = inference.OnlineSegmenter(config, variables)
  t = time.time()
  seg.step(video[0])
  compile_s = time.time() - t
  times, dets, mem = [], 0, {}
  for i in range(1, frames):
    t = time.time()
    dets += len(seg.step(video[i % len(video)]))
    times.append(time.time() - t)
    if i + 1 in (10, frames):
      mem[i + 1] = device_memory()
  ms = np.asarray(times) * 1e3  # ms[j] is frame j + 2 (1-based)
  steady = float(np.median(ms[min(8, len(ms) - 1):]))
  at10 = float(np.median(ms[4:14]))
  last = float(np.median(ms[-10:]))
  # the device step alone, blocked each frame (memory in, memory out)
  memory, prev = seg._memory, dict(seg._prev)
  image = inference.prepare_frame(video[0], seg._resized, seg._padded)
  size = np.asarray(seg._resized, np.int32)
  step_ms = []
  for _ in range(step_frames):
    t = time.time()
    memory, prev['cache'], d = seg._run(memory, prev, image, size, seg._scale)
    jax.block_until_ready(d)
    step_ms.append((time.time() - t) * 1e3)
  step = float(np.median(step_ms[1:] if len(step_ms) > 1 else step_ms))
  out = {'dtype': config.model.dtype,
         'video': f'{video[0].shape[0]}x{video[0].shape[1]} -> '
                  f'{seg._padded[0]}x{seg._padded[1]}',
         'frames': frames, 'compile_s': compile_s,
         'compilations': seg.compilations(),
         'ms_per_frame': steady, 'fps': 1e3 / steady,
         'device_step_ms': step, 'device_step_fps': 1e3 / step,
         'detections_per_frame': dets / max(1, frames - 1),
         'ms_at_frame_10': at10, f'ms_at_frame_{frames}': last,
         f'frame_{frames}_vs_frame_10': last / at10}
  if mem.get(10):
    out['device_bytes_in_use_at_frame_10'] = mem[10]['bytes_in_use']
    out[f'device_bytes_in_use_at_frame_{frames}'] = mem[frames]['bytes_in_use']
  return out


def train_check(config, variables, steps: int, deadline: Deadline,
                search: bool, log) -> dict:
  """The training step with one clip a device, then (where the device has
  a memory limit) the largest batch a device that fits: predicted from
  XLA's memory analysis of the one-clip program, then compiled and run,
  20% smaller after each out-of-memory."""
  import jax
  import numpy as np

  n_dev = jax.device_count()
  compiled, state, batch, compile_s = train_step_runner(config, 1, variables)
  times, state = time_train_steps(compiled, state, batch, steps)
  ma = compiled.memory_analysis()
  analysis = {k: int(getattr(ma, k)) for k in (
      'argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes',
      'temp_size_in_bytes', 'generated_code_size_in_bytes')
      if ma is not None and hasattr(ma, k)}
  s1 = float(np.median(times[1:] if len(times) > 1 else times))
  out = {'devices': n_dev, 'clip_len': config.train.clip_len,
         'clip': f'{config.train.clip_len}x{batch["image"].shape[2]}x'
                 f'{batch["image"].shape[3]}', 'dtype': config.model.dtype,
         'one_clip_a_device': {'compile_s': compile_s, 's_per_step': s1,
                               'clips_per_s': n_dev / s1,
                               'memory_analysis': analysis}}
  del compiled, state, batch
  mem = device_memory()
  if not search:
    out['largest_batch'] = 'not searched (--device_size=small)'
    return out
  if not mem or 'bytes_limit' not in mem or 'temp_size_in_bytes' not in analysis:
    out['largest_batch'] = 'not searched: no device memory limit (CPU)'
    return out
  fixed = (analysis['argument_size_in_bytes'] + analysis['output_size_in_bytes']
           - analysis.get('alias_size_in_bytes', 0)
           + analysis.get('generated_code_size_in_bytes', 0))
  per_clip = max(1, analysis['temp_size_in_bytes'])
  b = max(1, int((0.9 * mem['bytes_limit'] - fixed) // per_clip))
  out['largest_batch_predicted'] = b
  tried = []
  while b >= 1:
    if not deadline.allows(2.5 * compile_s + 30):
      out['largest_batch'] = (f'not verified: {deadline.left():.0f} s left '
                              f'of the budget (tried {tried})')
      return out
    try:
      compiled, state, batch, cs = train_step_runner(config, b, variables)
      times, state = time_train_steps(compiled, state, batch, max(2, steps // 2))
      sb = float(np.median(times[1:]))
      out['largest_batch'] = {'batch_per_device': b, 'compile_s': cs,
                              's_per_step': sb, 'clips_per_s': n_dev * b / sb,
                              'tried': tried}
      del compiled, state, batch
      return out
    except Exception as e:  # XLA's out-of-memory error has no own type
      text = str(e)
      if 'RESOURCE_EXHAUSTED' not in text and 'out of memory' not in text.lower():
        raise
      log(f'[train] {b} clips a device: out of memory')
      tried.append(b)
      b = int(b * 0.8) if b > 1 else 0
  out['largest_batch'] = {'batch_per_device': 0, 'tried': tried}
  return out


def bench_device(args, log=print) -> dict:
  """The accelerator check (see the module docstring); writes the JSON
  after each part, so a run cut short keeps what it measured."""
  deadline = Deadline(args.device_budget_s)
  result = {'date': time.strftime('%Y-%m-%d')}

  def save():
    if args.json:
      with open(args.json, 'w') as f:
        json.dump(result, f, indent=1)

  # the marked tests first, before this process takes the device
  log('[device] accelerator-marked tests ...')
  tests = args.device_tests if 'tests' in args.device_parts else 'skip'
  result['tests'] = run_marked_tests(tests, args.device_tests_k,
                                     max(30.0, deadline.left() - 150))
  import jax
  import numpy as np
  from iai_jax import config_lib
  from iai_jax.data import pipeline
  from iai_jax.models import build_model

  backend = jax.default_backend()
  small = args.device_size == 'small' or (args.device_size == 'auto'
                                          and backend == 'cpu')
  dev = jax.local_devices()[0]
  result.update({
      'machine': machine(), 'backend': backend,
      'device_kind': dev.device_kind, 'local_devices': jax.local_device_count(),
      'devices': jax.device_count(), 'jax': jax.__version__,
      'size': 'small' if small else 'full'})
  save()
  variant = 'tiny' if small else args.variant
  config = config_lib.make_config('ytvis19', variant or None)
  h0, w0 = (96, 160) if small else args.video_size
  frames = args.device_frames or (30 if small else 1000)
  step_frames = 5 if small else 100
  rng = np.random.default_rng(0)
  video = [rng.integers(0, 255, (h0, w0, 3), dtype=np.uint8) for _ in range(4)]
  variables = random_variables(build_model(config.model))
  result['stream'] = {}
  for dtype in ('float32', 'bfloat16'):
    n = frames if dtype == 'float32' else min(frames, 30 if small else 300)
    if PARTS[dtype] not in args.device_parts:
      result['stream'][dtype] = 'skipped: not in --device_parts'
      continue
    if not deadline.allows(30 if small else 60):
      result['stream'][dtype] = f'skipped: {deadline.left():.0f} s left'
      continue
    cfg = config_lib.make_config('ytvis19', variant or None)
    with cfg.unlocked():
      cfg.model.dtype = dtype
    log(f'[device] streaming {dtype}, {n} frames ...')
    result['stream'][dtype] = stream(cfg, variables, video, n, step_frames)
    result['peak_device_memory_after_stream'] = device_memory()
    save()
  s16 = result['stream'].get('bfloat16')
  if isinstance(s16, dict) and not small:  # the paper's figure is R50's
    result['paper'] = {'fps_rtx_a6000': PAPER_FPS,
                       'bf16_fps_over_paper': s16['fps'] / PAPER_FPS,
                       'target_bf16_fps': TARGET_BF16_FPS,
                       'target_met': bool(s16['fps'] >= TARGET_BF16_FPS)}
  if 'train' not in args.device_parts:
    result['train'] = 'skipped: not in --device_parts'
  elif deadline.allows(45 if small else 120):
    tcfg = config_lib.make_config('ytvis19', variant or None)
    with tcfg.unlocked():
      if small:
        tcfg.train.clip_len = 2
        tcfg.input.size = (64, 96)
      tcfg.train.batch_size = jax.device_count()
    log(f'[device] training step at {pipeline.bucket_size(tcfg)} ...')
    result['train'] = train_check(tcfg, variables, args.device_train_steps,
                                  deadline, not small, log)
  else:
    result['train'] = f'skipped: {deadline.left():.0f} s left'
  result['compile_s'] = {
      **{f'stream_{k}': v['compile_s'] for k, v in result['stream'].items()
         if isinstance(v, dict)},
      **({'train_one_clip': result['train']['one_clip_a_device']['compile_s']}
         if isinstance(result['train'], dict) else {}),
      **({'train_largest_batch': result['train']['largest_batch']['compile_s']}
         if isinstance(result['train'], dict)
         and isinstance(result['train'].get('largest_batch'), dict)
         and 'compile_s' in result['train']['largest_batch'] else {})}
  result['peak_device_memory'] = device_memory()
  result['peak_rss_mb'] = _peak_rss_mb()
  result['seconds'] = time.time() - deadline.start
  save()
  return result


# ----------------------------------------------------------------- export
def bench_export(args, log=print) -> dict:
  """The exported online step (python -m iai_jax.export, R50 by default):
  per platform list, the export command's time, the artifact's files and
  their sizes, then in a fresh process (serving only, no flax) the time to
  load it, to build an ExportedSegmenter, its first frame (XLA compiles the
  deserialized program) and ms per frame after that."""
  import subprocess
  import jax
  from iai_jax import checkpoints, config_lib
  from iai_jax.models import build_model

  spec = 'configs/ytvis19.py' + (f':{args.variant}' if args.variant else '')
  config = config_lib.make_config('ytvis19', args.variant or None)
  h, w = args.video_size
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(
      [ROOT] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
  out = {'config': spec, 'frame_size': f'{h}x{w}', 'artifacts': {}}
  with tempfile.TemporaryDirectory() as tmp:
    ckpt = os.path.join(tmp, 'ckpt')
    checkpoints.save_variables(
        ckpt, jax.device_get(random_variables(build_model(config.model))),
        {'source': 'benchmark.py export (random weights)'})
    for platforms in [p for p in args.export_platforms.split(';') if p]:
      folder = os.path.join(tmp, platforms.replace(',', '_'))
      cmd = [sys.executable, '-m', 'iai_jax.export', f'--config={spec}',
             f'--checkpoint={ckpt}', f'--output={folder}',
             f'--input_size={h},{w}', f'--platforms={platforms}']
      log(f'[export] {" ".join(cmd[1:])}')
      t = time.time()
      r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                         text=True)
      if r.returncode != 0:
        raise RuntimeError(f'export failed: {(r.stderr or r.stdout)[-2000:]}')
      a = {'export_command_s': time.time() - t}
      with open(os.path.join(folder, 'manifest.json')) as f:
        manifest = json.load(f)
      a['export_s (trace and lower)'] = manifest['export_s']
      a['padded_size'] = 'x'.join(map(str, manifest['padded_size']))
      a['kernels'] = manifest['kernels']
      a['files_mb'] = {n: os.path.getsize(os.path.join(folder, n)) / 2 ** 20
                       for n in sorted(os.listdir(folder))}
      a['total_mb'] = sum(a['files_mb'].values())
      a['serve'] = _serve_timing(folder, h, w, args.export_frames, env)
      # the in-process loop right after, on the same frames (this machine's
      # speed drifts: compare within a run)
      a['in_process'] = _serve_timing(folder, h, w, args.export_frames, env,
                                      in_process=(spec, ckpt))
      a['serve_ms_over_in_process_ms'] = (a['serve']['ms_per_frame']
                                          / a['in_process']['ms_per_frame'])
      out['artifacts'][platforms] = a
      log(f'[export] {platforms}: {a["total_mb"]:.1f} MiB, load '
          f'{a["serve"]["load_s"]:.2f} s, first frame '
          f'{a["serve"]["first_frame_s"]:.1f} s, '
          f'{a["serve"]["ms_per_frame"]:.0f} ms/frame (in process '
          f'{a["in_process"]["ms_per_frame"]:.0f})')
  return out


_SERVE = """
import json, sys, time
t0 = time.time()
import numpy as np
from iai_jax import serving
t1 = time.time()
if len(sys.argv) > 5:  # the in-process loop on the same checkpoint
  from iai_jax import checkpoints, config_lib, inference
  art = serving.load(sys.argv[1])
  config = config_lib.load_config_file(sys.argv[5])
  variables = checkpoints.restore_variables(config, sys.argv[6],
                                            log=lambda *_: None)
  t2 = time.time()
  seg = inference.OnlineSegmenter(config, variables)
else:
  art = serving.load(sys.argv[1])
  t2 = time.time()
  seg = serving.ExportedSegmenter(sys.argv[1])
t3 = time.time()
h, w, n = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(0)
video = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(4)]
seg.step(video[0])
t4 = time.time()
ms = []
for i in range(1, n):
  t = time.time()
  seg.step(video[i % 4])
  ms.append((time.time() - t) * 1e3)
bad = sorted(m for m in sys.modules if m.split('.')[0] == 'flax'
             or m.startswith('iai_jax.models'))
print(json.dumps({'import_s': t1 - t0, 'load_s': t2 - t1,
                  'segmenter_s': t3 - t2, 'first_frame_s': t4 - t3,
                  'ms_per_frame': float(np.median(ms)) if ms else None,
                  'frames': n, 'compilations': seg.compilations(),
                  'imports_flax_or_model': bad}))
"""


def _serve_timing(folder: str, h: int, w: int, frames: int, env,
                  in_process=None) -> dict:
  """The artifact served in a fresh process (see bench_export); with
  ``in_process`` (config spec, checkpoint) the in-process OnlineSegmenter
  instead (load_s is then the checkpoint's restore)."""
  import subprocess
  r = subprocess.run([sys.executable, '-c', _SERVE, folder, str(h), str(w),
                      str(frames), *(in_process or ())], cwd=ROOT, env=env,
                     capture_output=True, text=True)
  if r.returncode != 0:
    raise RuntimeError(f'serving failed: {(r.stderr or r.stdout)[-2000:]}')
  return json.loads(r.stdout.strip().splitlines()[-1])


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


WHAT = ('data', 'frame', 'train', 'infer', 'stages', 'memory', 'device',
        'export', 'predict', 'all')
def define_flags():
  """The command-line flags; defined only when the script runs, so that
  tests can import its functions beside other scripts."""
  flags.DEFINE_list('video_size', ['360', '640'], 'infer/memory/device/predict: '
                    'H,W of the video.')
  flags.DEFINE_integer('infer_frames', 100, 'infer: frames of the video.')
  flags.DEFINE_string('export_platforms', 'cpu;cpu,cuda', 'export: one '
                      'artifact per ";"-separated entry, each a --platforms '
                      'of python -m iai_jax.export.')
  flags.DEFINE_integer('export_frames', 10, 'export: frames served.')
  flags.DEFINE_integer('memory_frames', 1000, 'memory: frames of the video.')
  flags.DEFINE_list('predict_frames', ['100', '1000'], 'predict: frame counts '
                    'of the videos (each run in its own process).')
  flags.DEFINE_integer('steps', 6, 'train: timed steps.')
  flags.DEFINE_list('train_size', ['192', '320'], 'train: H,W of the clip.')
  flags.DEFINE_bool('bf16', False, 'train: bfloat16 compute.')
  flags.DEFINE_string('json', '', 'Also write the figures to this JSON file '
                      '(device: default device_check.json).')
  flags.DEFINE_integer('videos', 12, 'data: videos of the temporary dataset.')
  flags.DEFINE_integer('batch', 4, 'data: clips a batch.')
  flags.DEFINE_integer('batches', 10, 'data: timed batches.')
  flags.DEFINE_integer('frames', 30, 'frame: timed frames.')
  flags.DEFINE_string('variant', '', 'Config variants of ytvis19 (e.g. bf16).')
  flags.DEFINE_string('plot', '', 'memory: PNG of ms/frame and RSS against '
                      'the frame index.')
  # device
  flags.DEFINE_enum('device_size', 'auto', ['auto', 'small', 'full'],
                    'device: full = R50 at --video_size, 1,000 frames, the '
                    'largest training batch; small = the tiny config, 30 '
                    'frames (auto: small on CPU, full elsewhere).')
  flags.DEFINE_enum('device_tests', 'run', ['run', 'collect', 'skip'],
                    'device: run the accelerator-marked tests, only list them, '
                    'or skip them.')
  flags.DEFINE_list('device_parts', ['tests', 'fp32', 'bf16', 'train'],
                    'device: the parts to run (the marked tests, streaming in '
                    'fp32 and in bf16, the training step); the others are '
                    'reported as skipped.')
  flags.DEFINE_string('device_tests_k', '', 'device: pytest -k expression '
                      'selecting among the accelerator-marked tests.')
  flags.DEFINE_integer('device_frames', 0, 'device: frames of the fp32 video '
                       '(0: 1,000 full, 30 small).')
  flags.DEFINE_integer('device_train_steps', 6, 'device: timed training steps.')
  flags.DEFINE_float('device_budget_s', 330, 'device: seconds the check may '
                     'take; parts that would not fit are skipped and say so.')
  # the authors' code side by side (train, infer)
  flags.DEFINE_string('authors_python', '', 'train/infer: the python of the '
                      'authors\' venv; runs their harness alternated with ours '
                      'and prints the ratio of the medians.')
  flags.DEFINE_string('authors_src', os.environ.get('IAI_SRC', ''),
                      'train/infer: the exported zfonemore/IAI tree '
                      '(default $IAI_SRC).')
  flags.DEFINE_string('authors_harness', os.path.join(
      ROOT, '..', 'shared', 'tools', 'authors-reference', 'iai_peer.py'),
                      'train/infer: the harness running their code.')
  flags.DEFINE_integer('authors_threads', 2, 'train/infer: their torch threads.')
  flags.DEFINE_list('stages_parts', ['online', 'train'], 'stages: online, '
                    'train or both.')
  flags.DEFINE_integer('rounds', 3, 'train/infer with --authors_python: '
                       'alternations (ours, theirs).')
  flags.DEFINE_integer('round_frames', 30, 'infer with --authors_python: our '
                       'frames a round.')


def print_result(result: dict, indent: str = ''):
  for k, v in result.items():
    if isinstance(v, dict):
      print(f'{indent}[{k}]')
      print_result(v, indent + '  ')
    elif isinstance(v, float):
      print(f'{indent}{k:<32} {v:.3f}')
    elif isinstance(v, list) and len(v) > 8:
      print(f'{indent}{k:<32} [{len(v)} items]')
    else:
      print(f'{indent}{k:<32} {v}')


def main(argv):
  if len(argv) != 2 or argv[1] not in WHAT:
    raise app.UsageError(f'usage: benchmark.py {{{"|".join(WHAT)}}} [--flags]')
  import types
  names = ('infer_frames', 'memory_frames', 'steps', 'bf16', 'json', 'videos',
           'batch', 'batches', 'frames', 'variant', 'plot', 'device_size',
           'device_tests', 'device_parts', 'device_tests_k', 'device_frames',
           'device_train_steps', 'device_budget_s', 'authors_python',
           'authors_src', 'authors_harness', 'authors_threads', 'rounds',
           'round_frames', 'export_platforms', 'export_frames',
           'stages_parts')
  args = types.SimpleNamespace(
      what=argv[1], **{k: flags.FLAGS[k].value for k in names},
      video_size=tuple(int(x) for x in flags.FLAGS.video_size),
      predict_frames=[int(x) for x in flags.FLAGS.predict_frames],
      train_size=tuple(int(x) for x in flags.FLAGS.train_size))
  unknown = set(args.device_parts) - set(PARTS.values())
  if unknown:
    raise app.UsageError(f'--device_parts: unknown {sorted(unknown)}, known '
                         f'{sorted(set(PARTS.values()))}')
  if set(args.stages_parts) - set(STAGE_PARTS):
    raise app.UsageError(f'--stages_parts: unknown '
                         f'{sorted(set(args.stages_parts) - set(STAGE_PARTS))}'
                         f', known {sorted(STAGE_PARTS)}')
  if args.authors_python and args.what not in ('train', 'infer', 'stages'):
    raise app.UsageError('--authors_python goes with train, infer or stages')
  if args.what == 'device':
    # the largest training batch: let the check's process use most of the
    # accelerator's memory (jax preallocates 75% by default)
    os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.92')
    args.json = args.json or 'device_check.json'
    result = bench_device(args)
    print_result(result)
    print(f'wrote {os.path.abspath(args.json)}')
    return
  result = {'machine': machine(), 'date': time.strftime('%Y-%m-%d')}
  if args.what in ('data', 'all'):
    result['data'] = bench_data(args)
  if args.what in ('train', 'all'):
    result['train'] = bench_train(args)
  if args.what in ('infer', 'all'):
    result['infer'] = bench_infer(args, args.infer_frames, (10, 100),
                                  authors=bool(args.authors_python))
  if args.what in ('memory', 'all'):
    result['memory'] = bench_infer(args, args.memory_frames, (10, 100, 1000),
                                   plot=args.plot)
  if args.what in ('frame', 'all'):
    result['frame'] = bench_frame(args)
  if args.what in ('export', 'all'):
    result['export'] = bench_export(args)
  if args.what == 'stages':  # minutes, the authors' runs too: not in 'all'
    result['stages'] = bench_stages(args)
    result['stages']['markdown'] = stages_markdown(result['stages'])
    print(result['stages']['markdown'])
  if args.what == 'predict':  # minutes of video encoding: not in 'all'
    result['predict'] = bench_predict(args)
  print_result(result)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  define_flags()
  app.run(main)
