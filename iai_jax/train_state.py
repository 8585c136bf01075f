"""The training state: parameters, BatchNorm statistics, optimiser state.

The optimiser is the recipe's AdamW with parameter groups (the backbone at
``train.backbone_lr_mult`` x the learning rate and ``backbone_wd_mult`` x
the weight decay; frozen parameters get no update), a linear warm-up and
step decays. :func:`abstract_train_state` gives the state's shapes without
allocating it (what a checkpoint is restored into).
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from iai_jax.models import iai as iai_model


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  def variables(self) -> dict:
    return {'params': self.params, 'batch_stats': self.batch_stats}


def learning_rate_schedule(config, steps_per_epoch: int):
  """Linear warm-up from warmup_factor*lr, then /10 at each decay epoch."""
  t = config.train
  warm = optax.linear_schedule(t.lr * t.warmup_factor, t.lr, t.warmup_steps)
  boundaries = {int(e * steps_per_epoch): 0.1 for e in t.decay_epochs}
  decay = optax.piecewise_constant_schedule(t.lr, boundaries)
  return optax.join_schedules([warm, lambda s: decay(s + t.warmup_steps)],
                              [t.warmup_steps])


# Parameters in the optimiser's 'backbone' group (lr x backbone_lr_mult,
# weight decay x backbone_wd_mult). The authors' mmcv ``custom_keys``
# matches 'backbone' as a substring of the torch name, so their
# classification projector ``backbone_projector`` (ours:
# association/cls_projector, trained from scratch) is in it too.
BACKBONE_GROUP = (('backbone',), ('association', 'cls_projector'))


def param_labels(params, model_cfg):
  """'frozen', 'backbone' or 'rest' for every parameter."""
  trainable = iai_model.trainable_mask(params, model_cfg)

  def label(path, t):
    names = tuple(p.key for p in path)
    if not t:
      return 'frozen'
    if any(names[:len(g)] == g for g in BACKBONE_GROUP):
      return 'backbone'
    return 'rest'

  return jax.tree_util.tree_map_with_path(label, trainable)


def make_optimizer(config, params, steps_per_epoch: int):
  """(optax transformation, learning-rate schedule)."""
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


def create_train_state(variables, tx) -> TrainState:
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables['batch_stats'],
                    opt_state=tx.init(params))


def init_train_state(model, config, tx, rng) -> TrainState:
  """A fresh state (jit it with out_shardings to create it sharded)."""
  return create_train_state(iai_model.init_variables(model, rng), tx)


def abstract_train_state(config, steps_per_epoch: int = 1) -> TrainState:
  """Shapes and dtypes of the train state (no allocation)."""
  model = iai_model.build_model(config.model)
  abstract = iai_model.abstract_variables(model)
  tx, _ = make_optimizer(config, abstract['params'], steps_per_epoch)
  return jax.eval_shape(lambda r: init_train_state(model, config, tx, r),
                        jax.random.key(0))
