"""Training: the clip step, sharding, the loop and its logs.

``train(config, workdir)`` is the whole job and is what ``python -m
iai_jax.main --mode=train`` calls; tests call it with a tiny config.

The clip step (:func:`clip_loss`) runs the model over the clips with
:func:`iai_jax.models.rollout.teacher_forced_clip` (backbone on all B*T
frames, the association scanned over T with the memory written from the
ground-truth ID masks, FPN and heads on all frames), then the losses of
:mod:`iai_jax.losses` per frame, averaged. The optimiser and the state are
in :mod:`iai_jax.train_state`, the checkpoint layout in
:mod:`iai_jax.checkpoints`.

Sharding is declared: the batch is split along the mesh's ``data`` axis and
the train state is replicated; ``jax.jit`` inserts the collectives (the
mask-branch BatchNorm statistics and the loss normalisers are therefore
computed over the global batch).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from iai_jax import checkpoints, config_lib, preprocess
from iai_jax import losses as losses_lib
from iai_jax import targets as targets_lib
from iai_jax.data import pipeline
from iai_jax.models import iai as iai_model
from iai_jax.models import kernels, locations, rollout
from iai_jax.train_state import (TrainState, create_train_state,
                                 make_optimizer)


# ----------------------------------------------------------------- the step
def clip_forward(model, params, batch_stats, batch, rng, config, train=True):
  """Network outputs of every frame of a batch of clips, frames folded
  (clip-major, leading dim B*T), and the new batch_stats."""
  net = rollout.Applied(model, {'params': params, 'batch_stats': batch_stats})
  images = preprocess.normalize(batch['image'], batch['image_size'],
                                config.input)
  n = config.model.max_obj_num
  # The authors' training never writes a frame into the global memory for
  # a new instance (their test compares with N after the targets were
  # rewritten to N-1); train.new_instance_memory_writes=True does.
  new = batch['new_instance'] & config.train.new_instance_memory_writes
  out = rollout.teacher_forced_clip(
      net, images, config.model, id_masks=batch['id_map'],
      new_instance=new,
      id_mask_of=lambda id_map: targets_lib.id_mask_from_map(id_map, n),
      rng=rng, train=train, unroll=kernels.scan_unroll(config.train.scan_unroll))
  return out, net.batch_stats


def clip_loss(model, params, batch_stats, batch, rng, config):
  """Mean over the clip's frames of the IAI losses; returns (total, aux)."""
  out, new_stats = clip_forward(model, params, batch_stats, batch, rng, config)
  targets = targets_lib.batch_targets(
      targets_lib.clip_ground_truth(batch),
      shapes=locations.output_level_shapes(out))
  parts = losses_lib.iai_losses(out, targets,
                                time_steps=batch['id_map'].shape[1],
                                max_mask_samples=config.train.max_mask_samples,
                                key=jax.random.fold_in(rng, 1))
  return parts['total'], (parts, new_stats)


def train_step(state: TrainState, batch, rng, *, model, config, tx):
  rng = jax.random.fold_in(rng, state.step)
  grad_fn = jax.value_and_grad(
      lambda p: clip_loss(model, p, state.batch_stats, batch, rng, config),
      has_aux=True)
  (_, (parts, new_stats)), grads = grad_fn(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(parts)
  metrics['grad_norm'] = optax.tree.norm(grads)
  return TrainState(step=state.step + 1, params=params, batch_stats=new_stats,
                    opt_state=opt_state), metrics


# ----------------------------------------------------------------- sharding
def mesh_shape(spec, axes, devices: int) -> tuple[int, ...]:
  """``train.mesh_shape`` with its -1 resolved for ``devices`` devices;
  ConfigError when it cannot cover them."""
  spec = tuple(spec)
  fix = ('their product must be the device count; -1 stands for "the '
         'rest", e.g. --config.train.mesh_shape="(-1,)"')
  if (len(spec) != len(axes) or spec.count(-1) > 1
      or not all(isinstance(s, int) and (s >= 1 or s == -1) for s in spec)):
    raise config_lib.ConfigError(
        f'train.mesh_shape={spec!r} must be one positive integer (or one -1) '
        f'per axis of train.mesh_axes={tuple(axes)!r}; {fix}')
  known = math.prod(s for s in spec if s != -1)
  shape = tuple(devices // known if s == -1 else s for s in spec)
  if math.prod(shape) != devices or 0 in shape:
    raise config_lib.ConfigError(
        f'train.mesh_shape={spec!r} does not cover the {devices} devices: '
        f'{fix}')
  return shape


def make_mesh(config):
  shape = mesh_shape(config.train.mesh_shape, config.train.mesh_axes,
                     jax.device_count())
  # Auto axes: shardings are declared at the jit boundary and XLA propagates
  # them (jax 0.10's default Explicit axes would put them into the types).
  auto = (jax.sharding.AxisType.Auto,) * len(shape)
  return jax.make_mesh(shape, tuple(config.train.mesh_axes), axis_types=auto)


def shardings(mesh, abstract_state):
  replicated = NamedSharding(mesh, P())
  state_sharding = jax.tree_util.tree_map(lambda _: replicated, abstract_state)
  batch_sharding = NamedSharding(mesh, P('data'))
  return state_sharding, batch_sharding, replicated


def global_batch(local_batch, batch_sharding):
  """This host's part of the batch -> global arrays sharded over 'data'."""
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(batch_sharding, x),
      local_batch)


# ----------------------------------------------------------------- logging
def truncate_metrics(path: str, step: int) -> int:
  """Drop the rows of ``metrics.jsonl`` after ``step`` (a resumed run logs
  those steps again; a row cut by a kill is dropped too); returns how many
  rows were dropped. The file is replaced atomically."""
  from iai_jax import atomic
  if not os.path.exists(path):
    return 0
  with open(path, encoding='utf-8', errors='replace') as f:
    lines = f.read().splitlines()
  kept = []
  for line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(row, dict) and isinstance(row.get('step'), int) \
        and row['step'] <= step:
      kept.append(line)
  if len(kept) != len(lines):
    atomic.write_text(path, ''.join(l + '\n' for l in kept))
  return len(lines) - len(kept)


class MetricWriter:
  """JSONL + TensorBoard (tensorboardX) on process 0, progress line to log.

  ``start``: the step training starts from; rows of later steps (written
  before the checkpoint that is resumed) are dropped, so ``metrics.jsonl``
  holds one row a step."""

  def __init__(self, workdir: str, log=print, start: int = 0):
    self.log = log
    self.active = jax.process_index() == 0
    self.jsonl = None
    self.tb = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, 'metrics.jsonl')
      truncate_metrics(path, start)
      self.jsonl = open(path, 'a')
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, scalars: dict):
    if not self.active:
      return
    self.jsonl.write(json.dumps({'step': step, **scalars}) + '\n')
    self.jsonl.flush()
    for k, v in scalars.items():
      self.tb.add_scalar(k, v, step)
    self.tb.flush()

  def close(self):
    if self.active:
      self.jsonl.close()
      self.tb.close()


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


# ----------------------------------------------------------------- the loop
def next_batch(data_iter):
  """The next batch; a bad video record is a TrainingDataError naming the
  video and frame, however the data pipeline wrapped it."""
  try:
    return next(data_iter)
  except pipeline.TrainingDataError:
    raise
  except Exception as e:
    cause = e
    while cause is not None:
      if isinstance(cause, pipeline.TrainingDataError):
        raise cause from None
      cause = cause.__cause__ or cause.__context__
    raise


def train(config, workdir: str, *, source=None, log=print,
          stop_after: int | None = None, allow_schedule_change: bool = False):
  """Train with ``config``; checkpoints, logs and TensorBoard go to ``workdir``.

  Resumes from the newest checkpoint in ``workdir`` that loads (model,
  optimiser, data iterator); a broken newer one is moved to
  ``workdir/broken_checkpoints`` with a warning. The config must keep the
  model and data keys of the run it resumes, and its schedule keys unless
  ``allow_schedule_change`` (:func:`iai_jax.checkpoints.check_resume_config`).
  ``source`` overrides the TFDS training split (tests); ``stop_after`` stops
  after that many steps of this call (to test resuming).
  Returns the final train state and the last metrics.
  """
  from iai_jax.data import tfds_builder

  t = config.train
  if t.distributed:
    jax.distributed.initialize()
  mesh = make_mesh(config)
  split = math.lcm(jax.process_count(), dict(mesh.shape).get('data', 1))
  if t.batch_size % split:
    raise config_lib.ConfigError(
        f'train.batch_size={t.batch_size} cannot be split over the '
        f'{jax.process_count()} processes and the {dict(mesh.shape).get("data", 1)}'
        f' devices of the mesh axis "data": make it a multiple of {split}')
  if source is None:
    source = tfds_builder.open_split(config, 'train')
  steps_per_epoch = pipeline.steps_per_epoch(config, len(source))
  total_steps = t.steps or t.epochs * steps_per_epoch

  model = iai_model.build_model(config.model)
  abstract = iai_model.abstract_variables(model)
  tx, schedule = make_optimizer(config, abstract['params'], steps_per_epoch)

  def init_state(rng):
    return create_train_state(iai_model.init_variables(model, rng), tx)

  rng = jax.random.key(config.seed)
  abstract_state = jax.eval_shape(init_state, rng)
  state_sharding, batch_sharding, replicated = shardings(mesh, abstract_state)
  state = jax.jit(init_state, out_shardings=state_sharding)(rng)
  if config.init_from:
    fresh = jax.device_get(state.variables())
    loaded = checkpoints.init_from(config, fresh, log=log)
    state = state.replace(params=jax.device_put(loaded['params'], replicated),
                          batch_stats=jax.device_put(loaded['batch_stats'], replicated))
    log(f'initialised from {config.init_from}')

  data = pipeline.training_dataset(
      config, source, seed=config.seed,
      batch_size=t.batch_size // jax.process_count(),
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_workers=t.data_workers)
  data_iter = iter(data)

  manager = checkpoints.manager(workdir, t.keep_checkpoints)
  abstract_sharded = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state, state_sharding)
  restored, start = checkpoints.restore_for_resume(
      manager, abstract_sharded, data_iter, config=config,
      allow_schedule_change=allow_schedule_change, log=log)
  if restored is not None:
    state = restored
    log(f'resumed from step {start} in {workdir}')

  step_fn = jax.jit(functools.partial(train_step, model=model, config=config, tx=tx),
                    in_shardings=(state_sharding, batch_sharding, replicated),
                    out_shardings=(state_sharding, replicated),
                    donate_argnums=(0,))
  writer = MetricWriter(workdir, log, start=start)

  metrics = {}
  window_start, window_steps = time.time(), 0
  end = total_steps if stop_after is None else min(total_steps, start + stop_after)
  for step in range(start, end):
    batch = global_batch(next_batch(data_iter), batch_sharding)
    state, metrics = step_fn(state, batch, rng)
    window_steps += 1
    done = step + 1
    if done % t.log_every == 0 or done == end:
      scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
      scalars['lr'] = float(schedule(step))
      elapsed = time.time() - window_start
      rate = window_steps / max(elapsed, 1e-9)
      scalars['steps_per_s'] = rate
      writer.write(done, scalars)
      parts = ' '.join(f'{k} {scalars[k]:.4f}' for k in
                       ('total', 'cls', 'box', 'ctr', 'mask', 'id') if k in scalars)
      log(f'step {done}/{total_steps} | {parts} | lr {scalars["lr"]:.2e} | '
          f'{rate:.2f} steps/s | ETA {_format_eta((total_steps - done) / rate)}')
      window_start, window_steps = time.time(), 0
    if done % t.checkpoint_every == 0 or done == end:
      checkpoints.save(manager, done, state, data_iter, config)
  manager.wait_until_finished()
  manager.close()
  writer.close()
  return state, jax.device_get(metrics)
