"""The package's structure: the import graph, the backbone and reader
interfaces, and the config checks of every entry point."""

import ast
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from iai_jax import config_lib, train_state
from iai_jax.data import paths
from iai_jax.models import backbones, build_model, init_variables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(REPO, 'iai_jax')


def _imports():
  """{module: set of iai_jax modules it imports (anywhere in the file)}."""
  graph = {}
  for root, _, files in os.walk(PKG):
    for f in files:
      if not f.endswith('.py'):
        continue
      path = os.path.join(root, f)
      rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
      mod = rel[:-len('.__init__')] if rel.endswith('.__init__') else rel
      deps = set()
      for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
          deps |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
          deps.add(node.module)
          deps |= {f'{node.module}.{a.name}' for a in node.names}
      graph[mod] = set()
      for d in deps:
        while d and d not in (m for m in ()):  # normalise to known modules
          break
        graph[mod].add(d)
  known = set(graph)
  return {m: {d for d in ds if d in known and d != m} for m, ds in graph.items()}


def test_import_graph_has_no_cycle_and_runners_do_not_import_training():
  graph = _imports()
  # packages import their submodules' names; a package -> child edge is not
  # a dependency of the child on the package
  state, order = {}, []

  def visit(m, stack):
    state[m] = 'open'
    for d in graph[m]:
      if d.startswith(m + '.'):
        continue
      if state.get(d) == 'open':
        raise AssertionError('import cycle: ' + ' -> '.join(stack + [m, d]))
      if d not in state:
        visit(d, stack + [m])
    state[m] = 'done'

  for m in sorted(graph):
    if m not in state:
      visit(m, [])
  for runner in ('iai_jax.predict', 'iai_jax.eval_split', 'iai_jax.inference',
                 'iai_jax.checkpoints'):
    assert 'iai_jax.train' not in graph[runner], runner
  # the model does not reach up into training, data or the commands
  for m, deps in graph.items():
    if m.startswith('iai_jax.models'):
      assert all(d.startswith('iai_jax.models') for d in deps), (m, deps)


def _toy_config():
  cfg = config_lib.make_config('ytvis19', 'tiny')
  with cfg.unlocked():
    cfg.model.backbone.name = 'toy_backbone'
    cfg.model.backbone.width = 160
    cfg.model.association.d_model = 64
  return cfg


def test_a_backbone_is_one_module():
  cfg = _toy_config()
  config_lib.check_config(cfg)
  bb = backbones.get(cfg.model)
  assert bb.channels == {'c3': 160, 'c4': 320, 'c5': 640}
  assert bb.strides == {'c3': 8, 'c4': 16, 'c5': 32}
  model = build_model(cfg.model)
  variables = init_variables(model, jax.random.key(0))
  params = variables['params']
  assert set(params['backbone']) == {'proj_c3', 'proj_c4', 'proj_c5'}
  # C5' keeps the backbone's C5 width: the classification projector fills it
  assert params['association']['cls_projector']['kernel'].shape == (
      1, 1, 640, 640 - 2 * 64)
  assert params['fpn']['lateral_0']['kernel'].shape[2] == 160
  # the optimiser leaves the backbone's frozen part alone
  labels = train_state.param_labels(params, cfg.model)
  assert labels['backbone']['proj_c3']['kernel'] == 'frozen'
  assert labels['backbone']['proj_c5']['kernel'] == 'backbone'
  with cfg.unlocked():
    cfg.model.backbone.width = 100
  with pytest.raises(ValueError, match='model.backbone.width=100'):
    config_lib.check_config(cfg)
  with cfg.unlocked():
    cfg.model.backbone.name = 'no_such_backbone'
  with pytest.raises(ValueError, match="model.backbone.name='no_such_backbone'"):
    config_lib.check_config(cfg)


def test_resnet_through_the_interface():
  for depth, c5 in ((18, 512), (34, 512), (50, 2048), (101, 2048)):
    cfg = config_lib.make_config('ytvis19', f'r{depth}' if depth > 34 else 'tiny')
    with cfg.unlocked():
      cfg.model.backbone.depth = depth
      cfg.model.backbone.width = 64
    bb = backbones.get(cfg.model)
    assert bb.channels['c5'] == c5 and bb.channels['c3'] == c5 // 4
    assert bb.is_frozen(('conv1', 'kernel')) and bb.is_frozen(('layer1_0', 'conv1', 'kernel'))
    assert not bb.is_frozen(('layer2_0', 'conv1', 'kernel'))
    assert bb.torch_module(('layer3_1', 'downsample_bn')) == 'layer3.1.downsample.1'


def test_reader_is_chosen_by_dataset_format(tmp_path):
  cfg = config_lib.make_config('synthetic')
  assert paths.reader(cfg).__name__ == 'iai_jax.data.vis_json'
  with cfg.unlocked():
    cfg.dataset.root = str(tmp_path)
    cfg.dataset.format = 'no_such_format'
  with pytest.raises(ValueError, match="dataset.format='no_such_format'"):
    paths.reader(cfg)
  # categories without the dataset on disk: placeholders in label order
  assert paths.categories(cfg) == [(1, 'class 0'), (2, 'class 1'),
                                   (3, 'class 2'), (4, 'class 3')]


def test_configs_hold_the_recipe_and_variants_apply_in_order():
  c = config_lib.make_config('ytvis19', 'r101,ms,bf16')
  assert c.model.backbone.depth == 101 and c.model.dtype == 'bfloat16'
  assert c.input.train_scale_range == ((649, 360), (960, 480))
  ovis = config_lib.make_config('ovis')
  assert (ovis.model.num_classes, ovis.model.max_obj_num,
          ovis.infer.max_per_img) == (25, 25, 50)
  # config_lib holds no recipe numbers: only machinery
  src = open(os.path.join(PKG, 'config_lib.py')).read()
  for value in ('123.68', '1e-4', "'ytvis19'"):
    assert value not in src


@pytest.mark.parametrize('override,message', [
    ('--config.infer.tracker=mask_iuo', "infer.tracker='mask_iuo'"),
    ('--config.model.backbone.depth=19', 'model.backbone.depth=19'),
    ('--config.train.batch_size=0', 'train.batch_size=0'),
    ('--config.model.nope=1', "unknown config key 'model.nope'"),
])
def test_bad_config_values_fail_before_any_work(tmp_path, override, message):
  workdir = tmp_path / 'w'
  t = time.time()
  r = subprocess.run(
      [sys.executable, '-m', 'iai_jax.main', '--config=configs/synthetic.py',
       override, '--mode=train_and_eval', f'--workdir={workdir}',
       f'--config.dataset.root={tmp_path / "data"}'],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  elapsed = time.time() - t
  assert r.returncode == 1, r.stdout + r.stderr
  assert message in r.stderr and 'Traceback' not in r.stderr, r.stderr
  assert r.stderr.strip().count('\n') == 0, r.stderr  # one line
  # nothing was generated, trained or written
  assert not workdir.exists() and not (tmp_path / 'data').exists()
  assert elapsed < 60, elapsed
