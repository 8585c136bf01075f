"""Training: optimiser, the scanned clip step, sharding, checkpoints, the loop.

``train(config, workdir)`` is the whole job and is what ``python -m
iai_jax.main --mode=train`` calls; tests call it with a tiny config.

The clip step (:func:`clip_loss`):
1. the backbone on all B*T frames at once;
2. the association cell scanned over the T frames with ``jax.lax.scan``: each
   frame is associated with the memory, then its memory entry is written
   from the ground-truth ID mask (teacher forcing);
3. FPN and heads on all B*T frames at once; losses per frame, averaged.

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
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from iai_jax import config_lib
from iai_jax.data import pipeline
from iai_jax.models import iai as iai_model


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


# ----------------------------------------------------------------- optimiser
def learning_rate_schedule(config, steps_per_epoch: int):
  """Linear warm-up from warmup_factor*lr, then /10 at each decay epoch."""
  t = config.train
  warm = optax.linear_schedule(t.lr * t.warmup_factor, t.lr, t.warmup_steps)
  boundaries = {int(e * steps_per_epoch): 0.1 for e in t.decay_epochs}
  decay = optax.piecewise_constant_schedule(t.lr, boundaries)
  return optax.join_schedules([warm, lambda s: decay(s + t.warmup_steps)],
                              [t.warmup_steps])


def param_labels(params, model_cfg):
  """'frozen', 'backbone' or 'rest' for every parameter."""
  trainable = iai_model.trainable_mask(params, model_cfg)
  labels = {}
  for group, sub in trainable.items():
    labels[group] = jax.tree_util.tree_map(
        lambda t, g=group: ('backbone' if g == 'backbone' else 'rest')
        if t else 'frozen', sub)
  return labels


def make_optimizer(config, params, steps_per_epoch: int):
  t = config.train
  schedule = learning_rate_schedule(config, steps_per_epoch)
  scaled = lambda m: (lambda s: schedule(s) * m)
  tx = optax.multi_transform(
      {'rest': optax.adamw(schedule, weight_decay=t.weight_decay),
       'backbone': optax.adamw(scaled(t.backbone_lr_mult),
                               weight_decay=t.weight_decay * t.backbone_wd_mult),
       'frozen': optax.set_to_zero()},
      param_labels(params, config.model))
  if t.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(t.grad_clip), tx)
  return tx, schedule


def create_train_state(model, variables, tx) -> TrainState:
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables['batch_stats'],
                    opt_state=tx.init(params))


# ----------------------------------------------------------------- the step
def id_mask_from_map(id_map, num_ids: int):
  """(B, H, W) uint8 id_map -> (B, H, W, N+1) one-hot ID mask.

  Clip instance k holds ID k (k <= N-2); every other pixel (background,
  ignore regions, padding) goes to the background channel N.
  """
  ids = id_map.astype(jnp.int32)
  ids = jnp.where(ids < num_ids - 1, ids, num_ids)
  return jax.nn.one_hot(ids, num_ids + 1, dtype=jnp.float32)


def clip_forward(model, params, batch_stats, batch, rng, config, train=True):
  """Network outputs of every frame of a batch of clips, frames folded.

  Returns (outputs with leading dim B*T, new batch_stats).
  """
  m = config.model
  b, t_len, h, w = batch['id_map'].shape
  variables = {'params': params, 'batch_stats': batch_stats}
  images = iai_model.normalize_images(batch['image'], config.input)
  images = images.reshape(b * t_len, h, w, 3)
  feats = model.apply(variables, images, method=model.encode)
  fold = lambda x: x.reshape(b, t_len, *x.shape[1:]).swapaxes(0, 1)
  c5 = fold(feats['c5'])
  memory = iai_model.empty_memory(m, b, (h, w))
  rngs = jax.random.split(rng, t_len)

  def cell(memory, xs):
    c5_t, id_map_t, new_t, rng_t = xs
    c5p, cache = model.apply(variables, c5_t, memory, not train,
                             method=model.associate, rngs={'dropout': rng_t})
    memory = model.apply(variables, memory, cache,
                         id_mask_from_map(id_map_t, m.max_obj_num), new_t,
                         method=model.write_memory)
    return memory, c5p

  xs = (c5, batch['id_map'].swapaxes(0, 1), batch['new_instance'].swapaxes(0, 1),
        rngs)
  # Fully unrolled by default: XLA on CPU runs the scan's backward pass as a
  # loop ~20% slower than the unrolled one (T is small and static).
  _, c5p = jax.lax.scan(cell, memory, xs, unroll=config.train.scan_unroll)
  c5p = c5p.swapaxes(0, 1).reshape(b * t_len, *c5p.shape[2:])
  if train:
    out, updates = model.apply(variables, feats['c3'], feats['c4'], c5p, True,
                               method=model.decode, mutable=['batch_stats'])
    return out, updates['batch_stats']
  return model.apply(variables, feats['c3'], feats['c4'], c5p, False,
                     method=model.decode), batch_stats


def frame_ground_truth(batch):
  """Per-frame ground-truth dicts (leading dim B*T) from a batch of clips."""
  from iai_jax import targets as targets_lib
  b, t_len, h, w = batch['id_map'].shape
  m = batch['label'].shape[-1]
  labels = jnp.broadcast_to(batch['label'][:, None], (b, t_len, m))
  fold = lambda x: x.reshape(b * t_len, *x.shape[2:])
  return jax.vmap(targets_lib.gt_from_id_map)(
      fold(batch['id_map']), fold(batch['box']), fold(labels),
      fold(batch['id_target']), fold(batch['present']))


def clip_loss(model, params, batch_stats, batch, rng, config):
  """Mean over the clip's frames of the IAI losses; returns (total, aux)."""
  from iai_jax import losses as losses_lib
  from iai_jax import targets as targets_lib
  out, new_stats = clip_forward(model, params, batch_stats, batch, rng, config)
  targets = targets_lib.batch_targets(
      frame_ground_truth(batch), shapes=targets_lib.output_level_shapes(out),
      strides=tuple(config.model.fpn.strides))
  parts = losses_lib.iai_losses(out, targets,
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


def abstract_train_state(config, steps_per_epoch: int = 1):
  """Shapes and dtypes of the train state (no allocation)."""
  model = iai_model.build_model(config.model)
  abstract = iai_model.abstract_variables(model)
  tx, _ = make_optimizer(config, abstract['params'], steps_per_epoch)
  return jax.eval_shape(
      lambda r: create_train_state(model, iai_model._init(model, r, (64, 64)), tx),
      jax.random.key(0))


# ----------------------------------------------------------------- sharding
def make_mesh(config):
  shape = tuple(config.train.mesh_shape)
  n = jax.device_count()
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    shape = tuple(n // known if s == -1 else s for s in shape)
  if math.prod(shape) != n:
    raise ValueError(f'train.mesh_shape={tuple(config.train.mesh_shape)} does '
                     f'not cover the {n} devices')
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
class MetricWriter:
  """JSONL + TensorBoard (tensorboardX) on process 0, progress line to log."""

  def __init__(self, workdir: str, log=print):
    self.log = log
    self.active = jax.process_index() == 0
    self.jsonl = None
    self.tb = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      self.jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
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
def _checkpoint_manager(workdir: str, config):
  import orbax.checkpoint as ocp
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.train.keep_checkpoints,
      cleanup_tmp_directories=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, 'checkpoints')),
                               options=options,
                               item_names=('state', 'data', 'config'))


def train(config, workdir: str, *, source=None, log=print, stop_after: int | None = None):
  """Train with ``config``; checkpoints, logs and TensorBoard go to ``workdir``.

  Resumes from the latest checkpoint in ``workdir`` (model, optimiser, data
  iterator). ``source`` overrides the TFDS training split (tests);
  ``stop_after`` stops after that many steps of this call (to test resuming).
  Returns the final train state and the last metrics.
  """
  import grain
  import orbax.checkpoint as ocp

  from iai_jax.data import tfds_builder

  t = config.train
  if t.distributed:
    jax.distributed.initialize()
  if source is None:
    source = tfds_builder.open_split(config, 'train')
  steps_per_epoch = max(1, len(source) // t.batch_size)
  total_steps = t.steps or t.epochs * steps_per_epoch

  model = iai_model.build_model(config.model)
  abstract = iai_model.abstract_variables(model)
  tx, schedule = make_optimizer(config, abstract['params'], steps_per_epoch)

  def init_state(rng):
    variables = iai_model._init(model, rng, (64, 64))
    return create_train_state(model, variables, tx)

  rng = jax.random.key(config.seed)
  mesh = make_mesh(config)
  abstract_state = jax.eval_shape(init_state, rng)
  state_sharding, batch_sharding, replicated = shardings(mesh, abstract_state)
  state = jax.jit(init_state, out_shardings=state_sharding)(rng)
  if config.init_from:
    from iai_jax import weights
    fresh = jax.device_get({'params': state.params,
                            'batch_stats': state.batch_stats})
    loaded = weights.init_from(config, fresh, log=log)
    state = state.replace(params=jax.device_put(loaded['params'], replicated),
                          batch_stats=jax.device_put(loaded['batch_stats'], replicated))
    log(f'initialised from {config.init_from}')

  data = pipeline.training_dataset(
      config, source, seed=config.seed,
      batch_size=t.batch_size // jax.process_count(),
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_workers=t.data_workers)
  data_iter = iter(data)

  manager = _checkpoint_manager(workdir, config)
  start = 0
  if manager.latest_step() is not None:
    start = manager.latest_step()
    abstract_sharded = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state, state_sharding)
    restored = manager.restore(start, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_sharded),
        data=grain.checkpoint.CheckpointRestore(data_iter)))
    state = restored.state
    log(f'resumed from step {start} in {workdir}')

  step_fn = jax.jit(functools.partial(train_step, model=model, config=config, tx=tx),
                    in_shardings=(state_sharding, batch_sharding, replicated),
                    out_shardings=(state_sharding, replicated),
                    donate_argnums=(0,))
  writer = MetricWriter(workdir, log)

  def save(step):
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iter),
        config=ocp.args.JsonSave(json.loads(config.to_json()))))

  metrics = {}
  window_start, window_steps = time.time(), 0
  end = total_steps if stop_after is None else min(total_steps, start + stop_after)
  for step in range(start, end):
    batch = global_batch(next(data_iter), batch_sharding)
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
      save(done)
  manager.wait_until_finished()
  manager.close()
  writer.close()
  return state, jax.device_get(metrics)
