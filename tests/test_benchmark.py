"""python scripts/benchmark.py device: the accelerator check, run on CPU at
small sizes (the tiny config, a 96x160 video)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _device_check(tmp_path, *flags):
  out = tmp_path / 'device_check.json'
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(
      [REPO] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
  env['JAX_PLATFORMS'] = 'cpu'
  r = subprocess.run(
      [sys.executable, 'scripts/benchmark.py', 'device', f'--json={out}',
       '--device_size=small', *flags],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  assert f'wrote {out}' in r.stdout
  with open(out) as f:
    return json.load(f)


def _check_stream(s, frames):
  assert s['frames'] == frames and s['compilations'] == 1
  assert s['video'] == '96x160 -> 96x160'
  assert s['ms_per_frame'] > 0 and s['fps'] == pytest.approx(
      1e3 / s['ms_per_frame'])
  assert s['device_step_ms'] > 0 and s['compile_s'] > 0
  assert s[f'frame_{frames}_vs_frame_10'] > 0


def test_device_check_runs_on_cpu(tmp_path):
  """One command, one JSON: the accelerator-marked tests listed, the fp32
  stream measured, the parts left out saying so (about a minute on 2
  cores; the whole check is the slow test below)."""
  r = _device_check(tmp_path, '--device_tests=collect',
                    '--device_parts=tests,fp32', '--device_frames=12')
  assert r['backend'] == 'cpu' and r['size'] == 'small'
  tests = r['tests']
  assert tests['returncode'] == 0, tests
  marked = ' '.join(tests['tests'])
  for name in ('test_exported_step_equals_the_in_process_step',
               'test_bf16_switch_keeps_fp32_params',
               'test_online_loop_compiles_once_per_padded_size',
               'test_sharded_step_equals_single_device'):
    assert name in marked, marked
  assert 'test_device_check' not in marked  # the check does not run itself
  _check_stream(r['stream']['float32'], 12)
  assert r['stream']['bfloat16'].startswith('skipped')
  assert r['train'].startswith('skipped')
  assert 'paper' not in r  # the paper's figure is R50 at 360x640
  assert r['compile_s'] == {'stream_float32': r['stream']['float32']['compile_s']}
  assert r['peak_device_memory'] is None and r['peak_rss_mb'] > 0


@pytest.mark.slow
def test_device_check_all_parts_on_cpu(tmp_path):
  """Every part at small sizes: fp32 and bf16 streaming, the training step
  (the largest batch is searched only where the device has a memory
  limit). Minutes on 2 cores: three compilations."""
  r = _device_check(tmp_path, '--device_tests=skip', '--device_frames=12')
  assert r['tests']['skipped']
  _check_stream(r['stream']['float32'], 12)
  _check_stream(r['stream']['bfloat16'], 12)
  assert r['stream']['bfloat16']['dtype'] == 'bfloat16'
  t = r['train']
  assert t['devices'] == 1 and t['clip'] == '2x64x96'
  one = t['one_clip_a_device']
  assert one['s_per_step'] > 0 and one['clips_per_s'] == pytest.approx(
      1 / one['s_per_step'])
  assert one['memory_analysis']['temp_size_in_bytes'] > 0
  assert t['largest_batch'].startswith('not searched')
  assert set(r['compile_s']) == {'stream_float32', 'stream_bfloat16',
                                 'train_one_clip'}
