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
  """One command, one JSON, every part at small sizes: the
  accelerator-marked tests listed (run on a GPU/TPU), fp32 and bf16
  streaming, the training step (the largest batch is searched only where
  the device has a memory limit). About 1.5 minutes on 2 cores: three
  compilations."""
  r = _device_check(tmp_path, '--device_tests=collect', '--device_frames=12')
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
  _check_stream(r['stream']['bfloat16'], 12)
  assert r['stream']['bfloat16']['dtype'] == 'bfloat16'
  assert 'paper' not in r  # the paper's figure is R50 at 360x640
  t = r['train']
  assert t['devices'] == 1 and t['clip'] == '2x64x96'
  one = t['one_clip_a_device']
  assert one['s_per_step'] > 0 and one['clips_per_s'] == pytest.approx(
      1 / one['s_per_step'])
  assert one['memory_analysis']['temp_size_in_bytes'] > 0
  assert t['largest_batch'].startswith('not searched')
  assert set(r['compile_s']) == {'stream_float32', 'stream_bfloat16',
                                 'train_one_clip'}
  assert r['compile_s']['stream_float32'] == r['stream']['float32'][
      'compile_s']
  assert r['peak_device_memory'] is None and r['peak_rss_mb'] > 0


def test_device_check_parts_left_out_say_so(tmp_path):
  """--device_parts picks parts; the others are reported as skipped."""
  r = _device_check(tmp_path, '--device_tests=skip', '--device_parts=tests')
  assert r['tests']['skipped']
  assert r['stream']['float32'].startswith('skipped')
  assert r['stream']['bfloat16'].startswith('skipped')
  assert r['train'].startswith('skipped')
  assert r['compile_s'] == {}


FAKE_HARNESS = """
import json, sys
args = sys.argv[1:]
out = args[args.index('--bench-json') + 1]
json.dump({'bench': [{'backbone_single_frame_ms_median': 500.0,
                      'streaming_estimate_ms_per_frame': 900.0,
                      'loop_ms_per_frame_median_all': 400.0,
                      'component_ms_median': {'lstt': 60.0, 'neck': 40.0,
                                              'head_fwd': 150.0,
                                              'head_total': 250.0,
                                              'mem_update': 20.0}}]},
          open(out, 'w'))
"""


def test_stages_next_to_the_authors_breakdown(tmp_path):
  """python scripts/benchmark.py stages on the tiny config: every piece of
  our online frame timed, and the authors' harness's breakdown (here a fake
  harness with round numbers) mapped onto the same rows: post-processing is
  their head_total - head_fwd, host their loop minus its timed parts."""
  harness = tmp_path / 'harness.py'
  harness.write_text(FAKE_HARNESS)
  out = tmp_path / 'stages.json'
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  r = subprocess.run(
      [sys.executable, 'scripts/benchmark.py', 'stages', '--variant=tiny',
       '--video_size=96,160', '--stages_parts=online', '--frames=1',
       '--rounds=1', f'--authors_python={sys.executable}',
       f'--authors_src={tmp_path}', f'--authors_harness={harness}',
       f'--json={out}'], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=900)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  with open(out) as f:
    s = json.load(f)['stages']
  assert list(s['table']) == ['online frame']
  online = s['table']['online frame']
  assert all(row['iai_jax_ms'] > 0 for k, row in online.items()
             if not k.startswith('host')), online
  theirs = {k: row.get('authors_ms') for k, row in online.items()}
  assert theirs == {
      'normalise': None, 'backbone': 500, 'association (projector, LSTT)': 60,
      'ID mask + memory write (ID bank)': 20, 'FPN': 40,
      'head towers + predictors': 150, 'mask branch': None,  # in their head
      'post-processing (candidates, NMS, masks)': 100,
      'device step, whole': None, 'OnlineSegmenter.step, whole': 900,
      'host (IDs, masks at frame size, results)': 30}
  assert online['FPN']['ratio'] == pytest.approx(online['FPN']['iai_jax_ms']
                                                 / 40)
  assert '| FPN |' in s['markdown']


def test_stages_table_medians_and_ratios():
  """The table of several rounds: medians of ours and of theirs, the ratio
  of the medians; the authors' training step has no optimiser row."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      'benchmark', os.path.join(REPO, 'scripts', 'benchmark.py'))
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  ours = lambda f, fb, s: {'ms': {'forward (losses included)': f,
                                  'forward + backward': fb,
                                  'whole step (+ optimiser)': s}}
  theirs = lambda f, s: {'fwd_ms_median': f, 'bwd_ms_median': s - f,
                         'step_ms_median': s}
  rounds = [{'ours_train': ours(10, 30, 32), 'authors_train': theirs(20, 50)},
            {'ours_train': ours(14, 34, 40), 'authors_train': theirs(30, 70)},
            {'ours_train': ours(12, 90, 36), 'authors_train': theirs(10, 60)}]
  table = bench.stages_table(rounds)
  assert list(table) == ['training step']
  t = table['training step']
  assert t['forward (losses included)'] == {
      'iai_jax_ms': 12, 'authors_ms': 20, 'ratio': 0.6}
  assert t['forward + backward'] == {'iai_jax_ms': 34, 'authors_ms': 60,
                                     'ratio': 34 / 60}
  assert t['whole step (+ optimiser)'] == {'iai_jax_ms': 36}
  md = bench.stages_markdown({'table': table})
  assert '| forward + backward | 34 | 60 | 0.57 |' in md
  assert '| whole step (+ optimiser) | 36 | - | - |' in md
