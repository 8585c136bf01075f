"""The whole model: parameter counts, frozen parts, dtypes, the online loop."""

import csv
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iai_jax import config_lib
from iai_jax.models import (build_model, count_params, abstract_variables,
                            init_variables, trainable_mask)
from iai_jax.models import backbones, locations, rollout
from iai_jax.models.backbones.resnet import ResNet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TSV = os.path.join(REPO, 'tests', 'data', 'authors-r50-ytvis19-state-dict.tsv')


def _reference_counts():
  with open(TSV) as f:
    rows = list(csv.DictReader(f, delimiter='\t'))
  return {r['key']: int(r['numel']) for r in rows if r['kind'] == 'param'}


# our parameter sub-trees -> the authors' state-dict prefixes
GROUPS = {
    'backbone': [('backbone',)],
    'encoder_projector': [('association', 'encoder_projector')],
    'backbone_projector': [('association', 'cls_projector')],
    'lstt.patch_wise_id_bank': [('association', 'id_bank')],
    'lstt.LSTT.layers.0': [('association', 'layers_0')],
    'lstt.LSTT.decoder_norms': [('association', 'final_norm')],
    'neck.lateral_convs': [('fpn', f'lateral_{i}') for i in range(3)],
    'neck.fpn_convs': [('fpn', f'output_{i}') for i in range(5)],
    'bbox_head.cls_convs': [('head', f'cls_convs_{i}') for i in range(4)],
    'bbox_head.reg_convs': [('head', f'reg_convs_{i}') for i in range(4)],
    'bbox_head.id_convs': [('head', 'id_convs_0')],
    'bbox_head.conv_cls': [('head', 'conv_cls')],
    'bbox_head.conv_id': [('head', 'conv_id')],
    'bbox_head.conv_reg': [('head', 'conv_reg')],
    'bbox_head.conv_centerness': [('head', 'conv_centerness')],
    'bbox_head.controller': [('head', 'controller')],
    'bbox_head.scales': [('head', 'scales')],
    'bbox_head.mask_refine': [('mask_branch', f'refine_{i}_{p}')
                              for i in range(3) for p in ('conv', 'bn')],
    'bbox_head.mask_head': [('mask_branch', f'tower_{i}_{p}')
                            for i in range(4) for p in ('conv', 'bn')]
                           + [('mask_branch', 'tower_out')],
}


@pytest.fixture(scope='module')
def r50_params():
  cfg = config_lib.make_config('ytvis19')
  return abstract_variables(build_model(cfg.model))['params']


def test_parameter_count_matches_authors_model(r50_params):
  ref = _reference_counts()
  assert sum(ref.values()) == 45_433_337
  assert count_params(r50_params) == 45_433_337
  covered = 0
  for prefix, paths in GROUPS.items():
    want = sum(n for k, n in ref.items() if k.startswith(prefix + '.'))
    got = 0
    for path in paths:
      node = r50_params
      for p in path:
        node = node[p]
      got += count_params(node)
    assert got == want, f'{prefix}: ours {got:,} vs authors {want:,}'
    covered += want
  assert covered == sum(ref.values())  # every authors' parameter is in a group


def test_ovis_and_r101_configs():
  ovis = config_lib.make_config('ovis')
  assert (ovis.model.max_obj_num, ovis.model.num_classes,
          ovis.infer.max_per_img) == (25, 25, 50)
  p = abstract_variables(build_model(ovis.model))['params']
  assert p['head']['conv_id']['kernel'].shape[-1] == 25
  assert p['association']['id_bank']['kernel'].shape == (33, 33, 26, 256)
  r101 = config_lib.make_config('ytvis19', 'r101,ms')
  assert r101.model.backbone.depth == 101
  # the authors' R101 recipe: 1000 candidates, class threshold 0.05,
  # 2 clips a GPU x 4 GPUs
  assert (r101.infer.candidates_per_level, r101.infer.score_thr,
          r101.train.batch_size) == (1000, 0.05, 8)
  assert r101.input.train_scale_range == ((649, 360), (960, 480))
  yt21 = config_lib.make_config('ytvis21')
  assert (yt21.model.max_obj_num, yt21.train.batch_size) == (25, 8)
  assert yt21.input.train_scale_per == 'clip' and yt21.input.train_scale_range
  assert (ovis.train.batch_size, ovis.input.train_scale_per) == (8, 'frame')
  yt19 = config_lib.make_config('ytvis19')
  assert (yt19.train.batch_size, yt19.infer.candidates_per_level,
          yt19.input.train_scale_range) == (16, 200, ())


@pytest.mark.parametrize('depth,count', [(18, 11_176_512), (34, 21_284_672),
                                         (50, 23_508_032), (101, 42_500_160)])
def test_resnet_sizes_match_torchvision(depth, count):
  # torchvision's resnet{depth} parameter counts without the fc layer
  v = jax.eval_shape(lambda: ResNet(depth).init(jax.random.key(0),
                                                jnp.zeros((1, 64, 64, 3))))
  assert count_params(v['params']) == count
  out = jax.eval_shape(lambda v: ResNet(depth).apply(v, jnp.zeros((1, 64, 96, 3))), v)
  ch = 512 if depth < 50 else 2048
  assert out['c5'].shape == (1, 2, 3, ch)
  assert out['c3'].shape == (1, 8, 12, ch // 4)


def test_frozen_parts(r50_params):
  mask = trainable_mask(r50_params, config_lib.make_config('ytvis19').model)
  b = mask['backbone']
  assert not b['conv1']['kernel'] and not b['bn1']['scale']
  assert not b['layer1_0']['conv2']['kernel'] and not b['layer1_2']['bn3']['bias']
  assert b['layer2_0']['conv2']['kernel'] and b['layer4_2']['conv3']['kernel']
  # the authors train the BN affine of stages 2-4 (their running statistics
  # stay frozen: batch_stats are not parameters)
  assert b['layer3_1']['bn2']['scale'] and b['layer2_0']['downsample_bn']['bias']
  assert b['layer2_0']['downsample_conv']['kernel']
  # the classification projector is in the optimiser's backbone group
  from iai_jax import train_state
  labels = train_state.param_labels(r50_params,
                                    config_lib.make_config('ytvis19').model)
  assert labels['association']['cls_projector']['kernel'] == 'backbone'
  assert labels['association']['encoder_projector']['kernel'] == 'rest'
  assert labels['backbone']['layer3_1']['bn2']['scale'] == 'backbone'
  assert labels['backbone']['layer1_0']['bn1']['scale'] == 'frozen'
  # and the same groups hold the authors' parameter counts: backbone (lr
  # x0.1) 23,282,688 + 3,147,264 trainable; 225,344 frozen
  sizes = {}
  flat_l = jax.tree_util.tree_leaves(labels)
  flat_p = jax.tree_util.tree_leaves(r50_params)
  for lab, p in zip(flat_l, flat_p):
    sizes[lab] = sizes.get(lab, 0) + int(np.prod(p.shape))
  assert sizes['frozen'] == 225_344
  assert sizes['backbone'] == 23_282_688 + 3_147_264
  assert all(jax.tree_util.tree_leaves(mask['head']))
  frozen = sum(int(np.prod(x.shape)) for x, m in zip(
      jax.tree_util.tree_leaves(r50_params), jax.tree_util.tree_leaves(mask)) if not m)
  # stem conv + BN, stage 1 (215,808 incl. its BN) and every other BN affine
  assert 0 < frozen < 300_000


def test_backbone_batchnorm_uses_running_statistics():
  net = ResNet(18, width=8)
  x = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
  v = net.init(jax.random.key(1), x)
  stats = jax.tree_util.tree_map(lambda s: s + 0.3, v['batch_stats'])
  v = {'params': v['params'], 'batch_stats': stats}
  alone = net.apply(v, x[:1])['c5']
  together = net.apply(v, x)['c5'][:1]
  np.testing.assert_allclose(alone, together, atol=1e-5)


@pytest.fixture(scope='module')
def tiny():
  cfg = config_lib.make_config('ytvis19', 'tiny')
  model = build_model(cfg.model)
  return cfg, model, init_variables(model, jax.random.key(0))


@pytest.mark.accelerator
def test_bf16_switch_keeps_fp32_params(tiny):
  cfg, model, variables = tiny
  x = jax.random.normal(jax.random.key(2), (1, 64, 96, 3))
  out32, _ = jax.jit(model.apply)(variables, x)
  cfg16 = config_lib.make_config('ytvis19', 'tiny,bf16')
  model16 = build_model(cfg16.model)
  v16 = init_variables(model16, jax.random.key(0))
  assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(v16['params']))
  out16, mem16 = jax.jit(model16.apply)(variables, x)
  assert mem16.local_k.dtype == jnp.bfloat16
  for key in ('cls', 'ctr', 'reg'):
    # box distances are (ReLU of the conv) x the level's stride (128 at P7):
    # compare the conv's output scale, where bf16 rounding happened
    scale = locations.STRIDES if key == 'reg' else (1,) * 5
    a = np.concatenate([o.ravel() / s for o, s in zip(out32[key], scale)])
    b = np.concatenate([np.asarray(o, np.float32).ravel() / s
                        for o, s in zip(out16[key], scale)])
    assert np.isfinite(b).all()
    # same network, lower precision: close, not equal
    assert np.abs(a - b).max() < 0.05 * (np.abs(a).max() + 1)
    assert not np.array_equal(a, b)


@pytest.mark.accelerator
def test_online_loop_over_100_frames_compiles_once(tiny):
  cfg, model, variables = tiny
  traces = []

  @jax.jit
  def frame(variables, image, memory, pending):
    traces.append(1)
    net = rollout.Applied(model, variables)
    memory, out, cache = rollout.online_frame(net, memory, image, pending)
    return out['cls'][0], memory, cache

  h, w = 64, 96
  memory = rollout.empty_memory(cfg.model, 1, (h, w))
  net = rollout.Applied(model, variables)
  c5 = backbones.get(cfg.model).channels['c5']
  pending = rollout.no_pending(model, variables, cfg.model,
                               (1, h // 32, w // 32, c5), (h, w))
  images = jax.random.normal(jax.random.key(3), (4, 1, h, w, 3))
  id_mask = jnp.zeros((1, h, w, cfg.model.max_obj_num + 1)).at[:, 8:30, 8:40, 0].set(1)
  for t in range(100):
    cls, memory, cache = frame(variables, images[t % 4], memory, pending)
    pending = {'cache': cache, 'id_mask': id_mask,
               'new': jnp.asarray([t == 5]), 'valid': jnp.asarray(True)}
  assert len(traces) == 1
  assert int(memory.frame[0]) == 99  # frames 0..98 written, 99 pending
  assert int(memory.global_valid.sum()) == cfg.model.association.global_slots
  assert np.isfinite(np.asarray(cls)).all()


def test_unknown_config_keys_and_variants_are_errors():
  cfg = config_lib.make_config('ytvis19')
  with pytest.raises(AttributeError):
    cfg.model.not_a_key = 1
  with pytest.raises(ValueError, match="unknown config key 'model.backbone.deep'"):
    config_lib.check_override_key(cfg, 'model.backbone.deep')
  config_lib.check_override_key(cfg, 'model.backbone.depth')
  with pytest.raises(ValueError, match='unknown config variant'):
    config_lib.make_config('ytvis19', 'tiny,huge')
  with pytest.raises(ValueError, match='unknown config'):
    config_lib.make_config('coco')
  bad = config_lib.make_config('ytvis19')
  with bad.unlocked():
    bad.model.mask_branch.out_stride = 2
  with pytest.raises(ValueError, match='out_stride=2: choose 8'):
    config_lib.check_config(bad)


def _main(*args):
  return subprocess.run([sys.executable, '-m', 'iai_jax.main', *args],
                        cwd=REPO, capture_output=True, text=True, timeout=600)


def test_summary_command_json():
  r = _main('--mode=summary', '--config=configs/ytvis19.py', '--json')
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out['total_params'] == 45_433_337
  assert sum(out['groups'].values()) == out['total_params']
  # R50 at 384x640: backbone alone is ~40 GFLOPs; the heads add more
  assert 60 < out['gflops_per_frame'] < 400


def test_summary_table_and_bad_override():
  r = _main('--mode=summary', '--config=configs/ovis.py:tiny')
  assert r.returncode == 0, r.stderr
  assert 'total' in r.stdout and 'GFLOPs per frame at 96x160' in r.stdout
  r = _main('--config=configs/ytvis19.py', '--config.model.nonsense=1')
  assert r.returncode != 0
  assert "unknown config key 'model.nonsense'" in r.stderr


def test_missing_dataset_says_where_and_how(tmp_path):
  r = _main('--mode=train', '--config=configs/ovis.py:tiny',
            f'--config.dataset.root={tmp_path}/ovis', f'--workdir={tmp_path}/w')
  assert r.returncode != 0
  assert f'{tmp_path}/ovis' in r.stderr
  assert '--config.dataset.root=' in r.stderr and 'data/README.md' in r.stderr


def test_initialisation_follows_the_authors_torch_code():
  """Fresh modules start as the authors' code leaves them (torch defaults or
  xavier over the torch shapes), checked against torch's own initialisers:
  the same bound (largest |value|) and a uniform's std (bound / sqrt(3))."""
  import torch
  cfg = config_lib.make_config('ytvis19')
  model = build_model(cfg.model)
  v = init_variables(model, jax.random.key(0))
  p = jax.tree_util.tree_map(np.asarray, v['params'])

  def torch_bound(shape, init):
    """The bound torch's initialiser uses for a tensor of this shape."""
    fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(
        torch.empty(shape))
    if init == 'xavier':  # xavier_uniform_: sqrt(6 / (fan_in + fan_out))
      return np.sqrt(6.0 / (fan_in + fan_out))
    gain = torch.nn.init.calculate_gain('leaky_relu', np.sqrt(5))
    return gain * np.sqrt(3.0 / fan_in)  # kaiming_uniform_(a=sqrt(5))

  xavier, default_w = 'xavier', 'default'
  lstt = p['association']['layers_0']
  cases = [
      # (our array, torch shape, torch init)
      (lstt['value_bias'], (1, 2, 128, 225, 1), xavier),
      (lstt['rel_kernel'], (450, 128, 1, 1), xavier),
      (lstt['ffn_gct']['alpha'], (1, 1024, 1, 1), xavier),
      (lstt['ffn_gct']['beta'], (1, 1024, 1, 1), xavier),
      (lstt['linear1']['kernel'], (1024, 256), xavier),
      (p['association']['id_bank']['kernel'], (256, 21, 33, 33), xavier),
      (p['association']['encoder_projector']['kernel'], (256, 2048, 1, 1),
       default_w),
      (p['association']['cls_projector']['kernel'], (1536, 2048, 1, 1),
       default_w),
      (p['mask_branch']['tower_0_conv']['kernel'], (128, 128, 3, 3),
       default_w),
      (p['mask_branch']['tower_out']['kernel'], (8, 128, 1, 1), default_w),
  ]
  for ours, shape, init in cases:
    bound = torch_bound(shape, init)
    assert np.abs(ours).max() <= bound * 1.001, shape
    assert np.abs(ours).max() > bound * 0.9, shape
    np.testing.assert_allclose(ours.std(), bound / np.sqrt(3), rtol=0.1,
                               err_msg=str(shape))
  # biases at torch's default U(+-1/sqrt(fan_in)); LayerNorm / GroupNorm 1 / 0
  for ours, fan_in in ((lstt['linear1']['bias'], 256),
                       (lstt['linear2']['bias'], 1024),
                       (lstt['rel_bias'], 128),
                       (p['association']['id_bank']['bias'], 21 * 33 * 33),
                       (p['association']['cls_projector']['bias'], 2048),
                       (p['mask_branch']['tower_out']['bias'], 128)):
    assert 0 < np.abs(ours).max() <= 1 / np.sqrt(fan_in)
  np.testing.assert_array_equal(lstt['norm_ffn']['scale'], 1)
  np.testing.assert_array_equal(lstt['ffn_gn']['bias'], 0)
  # head: normal(0.01) towers, prior bias -log(99); FPN xavier, bias 0
  assert abs(p['head']['cls_convs_0']['conv']['kernel'].std() - 0.01) < 1e-3
  np.testing.assert_allclose(p['head']['conv_cls']['bias'], -np.log(99),
                             rtol=1e-6)
  np.testing.assert_array_equal(p['fpn']['output_0']['bias'], 0)
  # backbone: zero_init_residual - the last BN of every residual branch
  bb = p['backbone']
  assert not bb['layer1_0']['bn3']['scale'].any()
  assert not bb['layer4_2']['bn3']['scale'].any()
  np.testing.assert_array_equal(bb['layer1_0']['bn2']['scale'], 1)
