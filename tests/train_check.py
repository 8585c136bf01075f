"""One training step of a tiny IAI under a given device layout (subprocess).

  python tests/train_check.py --mode=single|sharded|distributed --out=F.npz
      [--process_id=I --num_processes=P --port=N] [--steps=2]

Writes the losses and the flattened parameters after the steps, so a test
can compare a 1-device run with an 8-device or a 2-process run.
"""

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402


def tiny_config(batch_size):
  from iai_jax import config_lib
  cfg = config_lib.make_config('ytvis19', 'tiny')
  with cfg.unlocked():
    cfg.model.max_obj_num = 4
    cfg.input.size = (64, 96)
    cfg.input.train_max_long = 96
    cfg.train.clip_len = 2
    cfg.train.batch_size = batch_size
    cfg.train.warmup_steps = 2
  return cfg


def records():
  from video_fixtures import make_record
  return [make_record(h=64, w=96, frames=4, tracks=[
      (1, False, {f: (4 + 2 * f + v, 30 + 2 * f, 4, 40 + v) for f in range(4)}),
      (3, False, {f: (40, 60, 50 - v, 90) for f in range(1, 4)}),
  ]) for v in range(4)]


def clip_batch(cfg, n):
  import numpy as np
  from iai_jax.data import pipeline
  recs = records()
  clips = [pipeline.make_training_clip(recs[i % len(recs)],
                                       np.random.default_rng(i), cfg)
           for i in range(n)]
  return pipeline.stack_batch(clips)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--mode', required=True)
  p.add_argument('--out', required=True)
  p.add_argument('--process_id', type=int, default=0)
  p.add_argument('--num_processes', type=int, default=1)
  p.add_argument('--port', type=int, default=0)
  p.add_argument('--steps', type=int, default=2)
  p.add_argument('--batch', type=int, default=8)
  a = p.parse_args()
  if a.mode == 'sharded':
    jax.config.update('jax_num_cpu_devices', 8)
  if a.mode == 'distributed':
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=f'localhost:{a.port}',
                               num_processes=a.num_processes,
                               process_id=a.process_id)
  import numpy as np
  from iai_jax import train, train_state
  from iai_jax.models import build_model, init_variables

  cfg = tiny_config(a.batch)
  mesh = train.make_mesh(cfg) if a.mode != 'single' else jax.make_mesh(
      (1,), ('data',), devices=jax.devices()[:1],
      axis_types=(jax.sharding.AxisType.Auto,))
  model = build_model(cfg.model)
  variables = init_variables(model, jax.random.key(0))
  tx, _ = train_state.make_optimizer(cfg, variables['params'], 100)
  state = train_state.create_train_state(variables, tx)
  state_sh, batch_sh, repl = train.shardings(mesh, state)
  state = jax.device_put(state, state_sh)
  step = jax.jit(functools.partial(train.train_step, model=model, config=cfg, tx=tx),
                 in_shardings=(state_sh, batch_sh, repl),
                 out_shardings=(state_sh, repl))
  full = clip_batch(cfg, a.batch)
  n_local = a.batch // jax.process_count()
  lo = jax.process_index() * n_local
  local = {k: v[lo:lo + n_local] for k, v in full.items()}
  losses = []
  for _ in range(a.steps):
    state, metrics = step(state, train.global_batch(local, batch_sh),
                          jax.random.key(5))
    losses.append(float(metrics['total']))
  params = jax.experimental.multihost_utils.process_allgather(
      state.params, tiled=True) if jax.process_count() > 1 else state.params
  flat = np.concatenate([np.asarray(x).ravel() for x in jax.tree_util.tree_leaves(params)])
  if jax.process_index() == 0:
    np.savez(a.out, losses=np.asarray(losses), params=flat,
             devices=jax.device_count(), backend=jax.default_backend(),
             local_devices=jax.local_device_count())


if __name__ == '__main__':
  import jax.experimental.multihost_utils  # noqa: F401
  main()
