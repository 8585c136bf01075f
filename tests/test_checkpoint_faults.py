"""Checkpoint faults (issue 17): a damaged newest checkpoint, a resume with
another config, an interrupted conversion into an existing checkpoint, the
metrics log after a resume. A small state stands in for the model's: the
files and the fallback do not depend on what the state holds."""

import json
import os
import types

import grain
import jax
import numpy as np
import pytest

from iai_jax import atomic, checkpoints, train

import train_check


def _iterator():
  return iter(grain.MapDataset.range(50).to_iter_dataset())


def _workdir(path, cfg, steps=(2, 4)):
  """A training workdir with a checkpoint (state w = step) at ``steps``."""
  mgr = checkpoints.manager(str(path))
  it = _iterator()
  for step in steps:
    next(it)
    checkpoints.save(mgr, step, {'w': np.full(3, step, np.float32)}, it, cfg)
  mgr.close()
  return path / 'checkpoints'


def _resume(path, cfg, **kwargs):
  mgr = checkpoints.manager(str(path))
  logs = []
  try:
    state, step = checkpoints.restore_for_resume(
        mgr, {'w': jax.ShapeDtypeStruct((3,), np.float32)}, _iterator(),
        config=cfg, log=logs.append, **kwargs)
  finally:
    mgr.close()
  return state, step, logs


def _truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _damage_data_files(step_dir):
  for root, _, files in os.walk(step_dir / 'state'):
    for name in files:
      if os.path.basename(root) == 'd':
        _truncate(os.path.join(root, name))


@pytest.mark.parametrize('damage', [
    lambda d: _truncate(d / 'state' / '_METADATA'),
    _damage_data_files,
    lambda d: os.remove(d / 'state' / 'manifest.ocdbt'),
    lambda d: open(d / 'config' / 'metadata', 'w').close(),
])
def test_resume_falls_back_to_the_newest_checkpoint_that_loads(tmp_path,
                                                               damage):
  cfg = train_check.tiny_config(batch_size=2)
  ckpts = _workdir(tmp_path, cfg)
  damage(ckpts / '4')
  state, step, logs = _resume(tmp_path, cfg)
  assert step == 2 and np.asarray(state['w']).tolist() == [2, 2, 2]
  warning, = [l for l in logs if l.startswith('warning')]
  assert f'checkpoint {ckpts / "4"} does not load' in warning
  assert '\n' not in warning
  # the broken one is kept aside, never deleted; the next save can use 4
  assert os.listdir(tmp_path / 'broken_checkpoints') == ['4']
  assert sorted(os.listdir(ckpts)) == ['2']


def test_restore_variables_skips_a_broken_newest_checkpoint(tmp_path,
                                                             monkeypatch):
  cfg = train_check.tiny_config(batch_size=2)
  ckpts = _workdir(tmp_path, cfg)
  _truncate(ckpts / '4' / 'state' / '_METADATA')
  # the model's abstract state: the small one the checkpoints hold
  from iai_jax import train_state

  class State(dict):
    def variables(self):
      return {'params': {'w': self['w']}}

  monkeypatch.setattr(train_state, 'abstract_train_state', lambda c: {
      'w': jax.ShapeDtypeStruct((3,), np.float32)})
  import orbax.checkpoint as ocp
  real_restore = ocp.CheckpointManager.restore

  def restore(self, step, args=None):
    out = real_restore(self, step, args=args)
    try:
      return types.SimpleNamespace(state=State(out.state))
    except (AttributeError, KeyError):  # only the config was restored
      return out

  logs = []
  monkeypatch.setattr(ocp.CheckpointManager, 'restore', restore)
  got = checkpoints.restore_variables(cfg, str(tmp_path), log=logs.append)
  assert np.asarray(got['params']['w']).tolist() == [2, 2, 2]
  assert any(f'checkpoint {ckpts / "4"} does not load' in l for l in logs)
  # a step folder named on purpose is not replaced by another one
  with pytest.raises(checkpoints.CheckpointDamagedError,
                     match=f'checkpoint {ckpts / "4"} does not load'):
    checkpoints.restore_variables(cfg, str(ckpts / '4'), log=logs.append)


def test_no_checkpoint_that_loads_is_one_clear_error(tmp_path):
  cfg = train_check.tiny_config(batch_size=2)
  ckpts = _workdir(tmp_path, cfg)
  for step in ('2', '4'):
    _truncate(ckpts / step / 'state' / '_METADATA')
  with pytest.raises(checkpoints.CheckpointDamagedError,
                     match='no checkpoint in .* loads .*broken_checkpoints'):
    _resume(tmp_path, cfg)


def test_resume_with_changed_keys_is_refused_and_names_them(tmp_path):
  cfg = train_check.tiny_config(batch_size=2)
  _workdir(tmp_path, cfg)
  changed = train_check.tiny_config(batch_size=4)
  with changed.unlocked():
    changed.train.clip_len = 3
    changed.train.lr = 1e-2
    changed.train.log_every = 7          # free: changes nothing saved
  with pytest.raises(checkpoints.ResumeConfigError) as e:
    _resume(tmp_path, changed)
  message = str(e.value)
  assert 'train.batch_size: 2 -> 4' in message
  assert 'train.clip_len: 2 -> 3' in message
  assert 'log_every' not in message and '\n' not in message
  # the same check runs before any work in the command
  with pytest.raises(checkpoints.ResumeConfigError, match='batch_size'):
    checkpoints.check_workdir_config(changed, str(tmp_path))
  # a schedule change only with the flag, and it is logged
  lr_only = train_check.tiny_config(batch_size=2)
  with lr_only.unlocked():
    lr_only.train.lr = 1e-2
  with pytest.raises(checkpoints.ResumeConfigError,
                     match=r'another schedule: train.lr: .* '
                     '--allow_schedule_change'):
    _resume(tmp_path, lr_only)
  state, step, logs = _resume(tmp_path, lr_only, allow_schedule_change=True)
  assert step == 4
  assert any('changed schedule' in l and 'train.lr' in l for l in logs)


def test_metrics_log_keeps_one_row_a_step_after_a_resume(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  # steps 1-5 logged, the checkpoint is at 4, the kill cut row 6 in half
  path.write_text(''.join(json.dumps({'step': s, 'total': 1.0}) + '\n'
                          for s in range(1, 6)) + '{"step": 6, "to')
  assert train.truncate_metrics(str(path), 4) == 2
  assert [json.loads(l)['step'] for l in path.read_text().splitlines()] == [
      1, 2, 3, 4]
  assert train.truncate_metrics(str(path), 4) == 0
  # the writer of a run resumed from step 3 drops step 4 before it logs it
  writer = train.MetricWriter(str(tmp_path), log=lambda *_: None, start=3)
  writer.write(4, {'total': 0.5})
  writer.close()
  assert [json.loads(l)['step'] for l in path.read_text().splitlines()] == [
      1, 2, 3, 4]


def test_interrupted_conversion_keeps_the_previous_checkpoint(tmp_path,
                                                              monkeypatch):
  out = str(tmp_path / 'converted')
  old = {'params': {'w': np.zeros(3, np.float32)}}
  checkpoints.save_variables(out, old, {'source': 'old'})
  # a kill after the new variables are written, before the metadata
  real = atomic.write_text

  def killed(path, text):
    if path.endswith(checkpoints.META_FILE):
      raise KeyboardInterrupt
    return real(path, text)

  monkeypatch.setattr(atomic, 'write_text', killed)
  new = {'params': {'w': np.ones(3, np.float32)}}
  with pytest.raises(KeyboardInterrupt):
    checkpoints.save_variables(out, new, {'source': 'new'}, overwrite=True)
  monkeypatch.undo()
  assert os.listdir(tmp_path) == ['converted']   # no staging folder left
  assert checkpoints.read_meta(out)['source'] == 'old'
  tree = checkpoints._read_tree(os.path.join(out, checkpoints.VARIABLES_DIR))
  assert np.asarray(tree['params']['w']).tolist() == [0, 0, 0]
  # refused without --overwrite, replaced as a whole with it
  with pytest.raises(FileExistsError, match='--overwrite'):
    checkpoints.save_variables(out, new, {'source': 'new'})
  checkpoints.save_variables(out, new, {'source': 'new'}, overwrite=True)
  assert checkpoints.read_meta(out)['source'] == 'new'
  assert sorted(os.listdir(out)) == sorted([checkpoints.VARIABLES_DIR,
                                            checkpoints.META_FILE])
  # a truncated metadata file is "damaged", not "does not fit the config"
  _truncate(os.path.join(out, checkpoints.META_FILE))
  with pytest.raises(checkpoints.CheckpointDamagedError,
                     match='does not read.*convert the checkpoint again'):
    checkpoints.read_meta(out)


def test_predict_on_broken_checkpoints_is_one_line(tmp_path):
  """Through the command: the warnings on stdout, one error line on stderr
  (no 'Event loop is closed' tracebacks around it), exit 1."""
  import subprocess
  import sys

  from PIL import Image
  cfg = train_check.tiny_config(batch_size=2)
  ckpts = _workdir(tmp_path / 'w', cfg)
  for step in ('2', '4'):
    _truncate(ckpts / step / 'state' / '_METADATA')
  frames = tmp_path / 'frames'
  frames.mkdir()
  Image.new('RGB', (96, 64)).save(frames / '0.png')
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = subprocess.run(
      [sys.executable, '-m', 'iai_jax.main', '--mode=predict',
       '--config=configs/ytvis19.py:tiny', '--config.model.max_obj_num=4',
       f'--checkpoint={tmp_path / "w"}', f'--input={frames}',
       f'--output={tmp_path / "o"}'],
      capture_output=True, text=True, cwd=repo, timeout=300,
      env=dict(os.environ, PYTHONPATH=repo))
  assert run.returncode == 1, run.stderr[-3000:]
  assert run.stderr == (f'error: no checkpoint in {ckpts} loads ({ckpts / "4"}'
                        f', {ckpts / "2"}); train again or pass another '
                        'checkpoint\n'), run.stderr[-3000:]
  assert run.stdout.count('warning: checkpoint') == 2
  assert not (tmp_path / 'o').exists()


_KILLED_CONVERSION = '''
import sys, time
import numpy as np
from iai_jax import atomic, checkpoints
real = atomic.write_text
def slow(path, text):
  if path.endswith(checkpoints.META_FILE):  # the variables are written
    open(sys.argv[2], 'w').close()
    time.sleep(300)
  return real(path, text)
atomic.write_text = slow
checkpoints.save_variables(sys.argv[1], {'params': {'w': np.ones(3, np.float32)}},
                           {'source': 'new'}, overwrite=True)
'''


def test_kill_9_during_a_conversion_keeps_the_previous_checkpoint(tmp_path):
  import signal
  import subprocess
  import sys
  import time
  out = tmp_path / 'converted'
  checkpoints.save_variables(str(out), {'params': {'w': np.zeros(3,
                                                                 np.float32)}},
                             {'source': 'old'})
  marker = tmp_path / 'marker'
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  child = subprocess.Popen(
      [sys.executable, '-c', _KILLED_CONVERSION, str(out), str(marker)],
      env=dict(os.environ, PYTHONPATH=repo))
  t = time.time()
  while not marker.exists():
    assert child.poll() is None and time.time() - t < 120
    time.sleep(0.1)
  child.send_signal(signal.SIGKILL)
  child.wait()
  assert checkpoints.read_meta(str(out))['source'] == 'old'
  tree = checkpoints._read_tree(str(out / checkpoints.VARIABLES_DIR))
  assert np.asarray(tree['params']['w']).tolist() == [0, 0, 0]
  stale = [n for n in os.listdir(tmp_path) if '.partial-' in n]
  assert len(stale) == 1     # the killed one's staging folder ...
  checkpoints.save_variables(str(out), {'params': {'w': np.ones(3,
                                                                np.float32)}},
                             {'source': 'new'}, overwrite=True)
  assert sorted(os.listdir(tmp_path)) == ['converted', 'marker']  # ... is gone
  assert checkpoints.read_meta(str(out))['source'] == 'new'
