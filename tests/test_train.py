"""Training: overfitting, sharded and multi-process equivalence, resume."""

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import train_check
from iai_jax import train, train_state
from iai_jax.data import pipeline
from iai_jax.models import build_model, init_variables

HERE = os.path.dirname(os.path.abspath(__file__))


def _run_check(tmp_path, mode, name, extra=(), background=False):
  out = str(tmp_path / f'{name}.npz')
  cmd = [sys.executable, os.path.join(HERE, 'train_check.py'), f'--mode={mode}',
         f'--out={out}', *extra]
  if background:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True), out
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stdout + r.stderr
  return np.load(out)


def _assert_same_params(actual, desired):
  """Parameters after the check's 2 AdamW steps agree with the 1-device run.

  A different reduction order changes a gradient by ~1e-7 relative. Where a
  gradient is itself at that noise level, Adam's normalised step (m / sqrt(v)
  is +-1 on step 1) can point the other way, so such an element may differ by
  up to one step of each learning rate (1e-7 + 5e-5 here). Every other
  element must agree to 2e-6, and those noise-level elements must be rare: a
  missing gradient all-reduce or a wrong batch split changes most of them.
  """
  diff = np.abs(np.asarray(actual) - np.asarray(desired))
  assert diff.max() <= 1e-4, diff.max()
  assert (diff > 2e-6).mean() < 1e-3, (diff > 2e-6).mean()


@pytest.fixture(scope='module')
def single_device(tmp_path_factory):
  return _run_check(tmp_path_factory.mktemp('single'), 'single', 'single')


@pytest.mark.multidevice
@pytest.mark.accelerator
def test_sharded_step_equals_single_device(single_device, tmp_path):
  """Over 8 faked CPU devices, or over all local devices of a GPU/TPU."""
  sharded = _run_check(tmp_path, 'sharded', 'sharded')
  cpu = str(sharded['backend']) == 'cpu'
  assert int(sharded['devices']) == (8 if cpu else int(sharded['local_devices']))
  np.testing.assert_allclose(sharded['losses'], single_device['losses'], rtol=1e-5)
  _assert_same_params(sharded['params'], single_device['params'])
  # the step did change the parameters
  assert np.abs(sharded['params']).sum() > 0


@pytest.mark.multidevice
def test_two_process_distributed_equals_single_device(single_device, tmp_path):
  import portpicker
  port = portpicker.pick_unused_port()
  procs = [_run_check(tmp_path, 'distributed', f'dist{i}',
                      (f'--process_id={i}', '--num_processes=2', f'--port={port}'),
                      background=True) for i in range(2)]
  for proc, _ in procs:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
  dist = np.load(procs[0][1])
  assert int(dist['devices']) == 2
  np.testing.assert_allclose(dist['losses'], single_device['losses'], rtol=1e-5)
  _assert_same_params(dist['params'], single_device['params'])


def test_overfitting_one_clip_drops_the_loss():
  cfg = train_check.tiny_config(batch_size=1)
  with cfg.unlocked():
    cfg.train.flip = False
    cfg.train.decay_epochs = (1000,)
  batch = train_check.clip_batch(cfg, 1)
  model = build_model(cfg.model)
  variables = init_variables(model, jax.random.key(0))
  tx, _ = train_state.make_optimizer(cfg, variables['params'], 10)
  state = train_state.create_train_state(variables, tx)
  step = jax.jit(functools.partial(train.train_step, model=model, config=cfg, tx=tx))
  first = None
  for _ in range(150):
    state, metrics = step(state, batch, jax.random.key(1))
    first = float(metrics['total']) if first is None else first
  last = float(metrics['total'])
  assert np.isfinite(last)
  # every part goes down; the total by at least 80%
  assert last < 0.2 * first, (first, last)


def _resume_config(tmp_path):
  cfg = train_check.tiny_config(batch_size=2)
  with cfg.unlocked():
    cfg.train.steps = 4
    cfg.train.checkpoint_every = 2
    cfg.train.log_every = 1
  return cfg


def test_kill_and_resume_equals_straight_run(tmp_path):
  cfg = _resume_config(tmp_path)
  source = train_check.records()
  logs = []
  straight, _ = train.train(cfg, str(tmp_path / 'a'), source=source,
                            log=logs.append)
  # a run that stops after 2 steps, then a new call that resumes it
  train.train(cfg, str(tmp_path / 'b'), source=source, stop_after=2,
              log=lambda *_: None)
  resumed_logs = []
  resumed, _ = train.train(cfg, str(tmp_path / 'b'), source=source,
                           log=resumed_logs.append)
  assert any('resumed from step 2' in l for l in resumed_logs)
  for a, b in zip(jax.tree_util.tree_leaves(straight.params),
                  jax.tree_util.tree_leaves(resumed.params)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert int(resumed.step) == 4
  # progress lines, JSONL and TensorBoard logs
  assert any('steps/s' in l and 'ETA' in l and 'lr' in l for l in logs)
  rows = [json.loads(l) for l in open(tmp_path / 'a' / 'metrics.jsonl')]
  assert [r['step'] for r in rows] == [1, 2, 3, 4]
  assert {'total', 'cls', 'box', 'ctr', 'mask', 'id', 'lr', 'steps_per_s'} <= set(rows[0])
  assert os.listdir(tmp_path / 'a' / 'tensorboard')
  # only complete checkpoints, the last k kept
  assert sorted(os.listdir(tmp_path / 'b' / 'checkpoints')) == ['2', '4']


def test_learning_rate_schedule():
  cfg = train_check.tiny_config(batch_size=2)
  with cfg.unlocked():
    cfg.train.warmup_steps = 10
    cfg.train.lr = 1e-3
    cfg.train.decay_epochs = (8, 11)
  sched = train_state.learning_rate_schedule(cfg, steps_per_epoch=10)
  np.testing.assert_allclose(sched(0), 1e-6, rtol=1e-5)
  np.testing.assert_allclose(sched(5), 1e-6 + 0.5 * (1e-3 - 1e-6), rtol=1e-5)
  np.testing.assert_allclose(sched(10), 1e-3, rtol=1e-5)
  np.testing.assert_allclose(sched(79), 1e-3, rtol=1e-5)
  np.testing.assert_allclose(sched(80), 1e-4, rtol=1e-5)
  np.testing.assert_allclose(sched(110), 1e-5, rtol=1e-5)


def test_frozen_parameters_do_not_move_and_backbone_lr_is_scaled():
  cfg = train_check.tiny_config(batch_size=1)
  with cfg.unlocked():  # a first step large enough to see in float32
    cfg.train.lr = 1e-3
    cfg.train.warmup_factor = 1.0
    cfg.train.weight_decay = 0.0
  batch = train_check.clip_batch(cfg, 1)
  model = build_model(cfg.model)
  variables = init_variables(model, jax.random.key(0))
  tx, _ = train_state.make_optimizer(cfg, variables['params'], 10)
  state = train_state.create_train_state(variables, tx)
  new, _ = jax.jit(functools.partial(train.train_step, model=model, config=cfg,
                                     tx=tx))(state, batch, jax.random.key(1))
  old_b, new_b = variables['params']['backbone'], new.params['backbone']
  np.testing.assert_array_equal(new_b['conv1']['kernel'], old_b['conv1']['kernel'])
  np.testing.assert_array_equal(new_b['layer1_0']['conv1']['kernel'],
                                old_b['layer1_0']['conv1']['kernel'])
  # BatchNorm affine: frozen in the stem and stage 1, trained (x0.1) from
  # stage 2 on, as the authors' (their running statistics stay frozen)
  np.testing.assert_array_equal(new_b['bn1']['scale'], old_b['bn1']['scale'])
  np.testing.assert_array_equal(new_b['layer1_0']['bn1']['scale'],
                                old_b['layer1_0']['bn1']['scale'])
  assert not np.array_equal(new_b['layer3_0']['downsample_bn']['scale'],
                            old_b['layer3_0']['downsample_bn']['scale'])
  np.testing.assert_array_equal(
      new.batch_stats['backbone']['layer3_0']['bn1']['mean'],
      variables['batch_stats']['backbone']['layer3_0']['bn1']['mean'])
  # Adam's first step moves every trained weight by ~lr: x0.1 in the backbone
  lr = float(train_state.learning_rate_schedule(cfg, 10)(0))
  # (the shortcut conv: with zero_init_residual the residual branch's convs
  # get no gradient on the first step)
  d_back = np.abs(np.asarray(new_b['layer3_0']['downsample_conv']['kernel'])
                  - np.asarray(old_b['layer3_0']['downsample_conv']['kernel'])
                  ).max()
  d_head = np.abs(np.asarray(new.params['head']['conv_cls']['kernel'])
                  - np.asarray(variables['params']['head']['conv_cls']['kernel'])).max()
  assert d_head == pytest.approx(lr, rel=0.05)
  assert d_back == pytest.approx(0.1 * lr, rel=0.05)
  # mask-branch BatchNorm statistics were updated from the batch
  assert not np.allclose(new.batch_stats['mask_branch']['refine_0_bn']['mean'],
                         variables['batch_stats']['mask_branch']['refine_0_bn']['mean'])
