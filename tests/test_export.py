"""The exported online step: python -m iai_jax.export and ExportedSegmenter."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from iai_jax import checkpoints, config_lib, inference, serving
from iai_jax import export as export_lib
from iai_jax.models import build_model, init_variables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# random weights: let every candidate through, so frames have detections
LOW_THRESHOLDS = {'infer.score_thr': 0.0, 'infer.id_thr': 0.0,
                  'infer.video_score_thr': 0.0}
PLATFORMS = sorted({'cpu', 'cuda', serving.this_platform()})


def _env():
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(
      [REPO] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
  return env


def _video(seed, n, h=90, w=150):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """(config, variables, artifact folder): a random tiny model saved as a
  checkpoint and exported by the command for 90x150 frames (padded 96x160)
  and several platforms."""
  tmp = tmp_path_factory.mktemp('export')
  cfg = config_lib.make_config('ytvis19', 'tiny')
  with cfg.unlocked():
    for k, v in LOW_THRESHOLDS.items():
      config_lib.set_value(cfg, k, v)
  variables = init_variables(build_model(cfg.model), jax.random.key(0))
  checkpoints.save_variables(str(tmp / 'ckpt'), variables, {'source': 'test'})
  out = str(tmp / 'artifact')
  cmd = [sys.executable, '-m', 'iai_jax.export',
         '--config=configs/ytvis19.py:tiny', f'--checkpoint={tmp / "ckpt"}',
         f'--output={out}', '--input_size=90,150',
         f'--platforms={",".join(PLATFORMS)}']
  cmd += [f'--config.{k}={v}' for k, v in LOW_THRESHOLDS.items()]
  r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stdout + r.stderr
  assert 'exported the online step' in r.stdout
  return cfg, variables, out


def test_manifest_says_what_the_artifact_serves(exported):
  cfg, variables, out = exported
  m = serving.read_manifest(out)
  assert m['padded_size'] == [96, 160] and m['resized_size'] == [96, 160]
  assert m['frame_size'] == [90, 150]
  assert m['platforms'] == PLATFORMS
  assert m['kernels'] == 'per_platform'  # CPU kernels on CPU, XLA's elsewhere
  assert m['jax'] == jax.__version__
  assert m['calling_convention_version'] >= \
      jax.export.minimum_supported_calling_convention_version
  assert len(m['categories']) == cfg.model.num_classes
  assert m['config']['infer']['score_thr'] == 0.0
  assert m['config']['model']['max_obj_num'] == cfg.model.max_obj_num
  assert m['config_spec'] == 'configs/ytvis19.py:tiny'
  for name, size in m['files'].items():
    assert os.path.getsize(os.path.join(out, name)) == size
  n_weights = len(jax.tree_util.tree_leaves(variables))
  assert len(m['weights']) == n_weights
  assert any('backbone' in w for w in m['weights'])


@pytest.mark.accelerator
def test_exported_step_equals_the_in_process_step(exported):
  """Over a 20-frame video: the same detections, IDs, classes, scores and
  masks; the dense device outputs to 1e-6; the same video tracks; one
  compilation."""
  cfg, variables, out = exported
  seg = serving.ExportedSegmenter(out)
  ref = inference.OnlineSegmenter(cfg, variables,
                                  [c for c, _ in seg.artifact.categories])
  assert seg.class_names == [f'class {k}' for k in range(cfg.model.num_classes)]
  ids_seen, count = set(), 0
  for t, frame in enumerate(_video(0, 20)):
    a, b = ref.step(frame), seg.step(frame)
    assert [i['id'] for i in a] == [i['id'] for i in b], t
    for x, y in zip(a, b):
      assert x['label'] == y['label'] and x['category_id'] == y['category_id']
      np.testing.assert_allclose(y['score'], x['score'], rtol=0, atol=1e-6)
      np.testing.assert_allclose(y['box'], x['box'], rtol=0, atol=1e-4)
      np.testing.assert_array_equal(y['mask'], x['mask'])
      ids_seen.add(x['id'])
    count += len(a)
    for k, v in ref.last_device.items():
      w = seg.last_device[k]
      assert np.shape(w) == np.shape(v) and np.asarray(w).dtype == \
          np.asarray(v).dtype, k
      if np.asarray(v).dtype == bool:
        np.testing.assert_array_equal(np.asarray(w), np.asarray(v), err_msg=k)
      else:
        np.testing.assert_allclose(np.asarray(w), np.asarray(v), rtol=0,
                                   atol=1e-6 * max(1.0, float(np.abs(v).max())),
                                   err_msg=k)
    np.testing.assert_array_equal(np.asarray(seg._memory['global_valid']),
                                  np.asarray(ref._memory.global_valid))
  assert count >= 20 and len(ids_seen) >= 3  # the tracker had work to do
  assert seg.compilations() == 1
  # a frame the artifact cannot serve changes nothing
  with pytest.raises(serving.ArtifactError, match='padded to 96x128'):
    seg.step(_video(1, 1, h=120, w=160)[0])
  assert seg.frames == 20
  want, got = ref.finish(), seg.finish()
  assert len(want) > 0 and got == want


def test_serving_never_imports_the_model(exported):
  """A process that serves the artifact has no flax and no iai_jax.models."""
  _, _, out = exported
  code = f'''
import json, sys
import numpy as np
from iai_jax import serving
seg = serving.ExportedSegmenter({out!r})
rng = np.random.default_rng(0)
n = sum(len(seg.step(rng.integers(0, 255, (90, 150, 3), dtype=np.uint8)))
        for _ in range(2))
seg.finish()
bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flax', 'optax')
             or m.startswith('iai_jax.models') or m == 'iai_jax.inference')
print(json.dumps({{'bad': bad, 'instances': n}}))
'''
  r = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=_env(),
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout + r.stderr
  result = json.loads(r.stdout.strip().splitlines()[-1])
  assert result['bad'] == [] and result['instances'] > 0


def _copy(out, tmp_path, edit=None):
  dst = tmp_path / 'copy'
  shutil.copytree(out, dst)
  if edit:
    file = dst / serving.MANIFEST
    m = json.loads(file.read_text())
    edit(m)
    file.write_text(json.dumps(m))
  return str(dst)


def _one_line_error(match, fn, *args, **kwargs):
  with pytest.raises(serving.ArtifactError, match=match) as e:
    fn(*args, **kwargs)
  assert '\n' not in str(e.value)
  return str(e.value)


def test_another_size_or_version_is_a_clear_error(exported, tmp_path):
  _, _, out = exported
  # frames of another padded size: at load (frame_size) or at the first frame
  msg = _one_line_error('padded to 96x160', serving.load, out,
                        frame_size=(120, 160))
  assert 'padded to 96x128' in msg and '--input_size=120,160' in msg
  serving.load(out, frame_size=(80, 160))  # also pads to 96x160 (as 90x150)
  # another format version
  path = _copy(out, tmp_path, lambda m: m.update(format_version=99))
  _one_line_error('format version 99, this iai_jax reads version 1',
                  serving.ExportedSegmenter, path)
  shutil.rmtree(path)
  # a calling convention this jax does not run
  path = _copy(out, tmp_path, lambda m: m.update(
      calling_convention_version=1, jax='0.4.1'))
  msg = _one_line_error('exported by jax 0.4.1', serving.load, path)
  assert 'export it again with python -m iai_jax.export' in msg
  shutil.rmtree(path)
  # another platform
  path = _copy(out, tmp_path, lambda m: m.update(platforms=['tpu']))
  _one_line_error(f'exported for tpu, this machine runs '
                  f'{serving.this_platform()}', serving.load, path)
  shutil.rmtree(path)
  # a damaged program, a missing folder
  path = _copy(out, tmp_path)
  with open(os.path.join(path, serving.STEP_FILE), 'r+b') as f:
    f.seek(0)
    f.write(b'\0' * 64)
  _one_line_error('cannot be deserialized', serving.load, path)
  _one_line_error('not an exported iai_jax step', serving.load,
                  str(tmp_path / 'nothing'))


def test_export_refuses_bad_input_in_one_line(exported, tmp_path):
  cfg, variables, out = exported
  with pytest.raises(FileExistsError, match='--overwrite'):
    export_lib.export_step(cfg, variables, out)
  with pytest.raises(ValueError, match='unknown gpu'):
    export_lib.check_platforms(['cpu', 'gpu'])
  r = subprocess.run(
      [sys.executable, '-m', 'iai_jax.export', '--config=configs/ytvis19.py:tiny',
       f'--checkpoint={tmp_path / "none"}', f'--output={tmp_path / "o"}'],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert r.returncode == 1
  lines = r.stderr.strip().splitlines()
  assert lines[-1].startswith('error: checkpoint') and 'does not exist' in \
      lines[-1], r.stderr
  assert not os.path.exists(tmp_path / 'o')
