"""Weight conversion (iai_jax.convert) and converted checkpoints (iai_jax.checkpoints).

Key coverage uses the authors' state-dict key list (tests/data/*.tsv) with
random values; numerical parity builds each layer type, and a whole
ResNet-50, in plain PyTorch (CPU) and compares with the Flax modules of the
model fed with the converted checkpoints.
"""

import ast
import csv
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest

from iai_jax import checkpoints, config_lib, convert
from iai_jax.models import association, layers as L
from iai_jax.models.backbones import resnet

import torch  # noqa: E402  (the test extra installs it)
F = torch.nn.functional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TSV = os.path.join(REPO, 'tests', 'data', 'authors-r50-ytvis19-state-dict.tsv')
TINY = 'configs/ytvis19.py:tiny'


def _tsv_rows():
  with open(TSV) as f:
    return list(csv.DictReader(f, delimiter='\t'))


def _authors_state_dict(seed=0):
  """Every key of the authors' R50 YTVIS-19 state dict, random values."""
  rng = np.random.default_rng(seed)
  sd = {}
  for r in _tsv_rows():
    shape = ast.literal_eval(r['shape'])
    if r['dtype'] == 'int64':
      sd[r['key']] = np.array(7, np.int64)
    else:
      sd[r['key']] = rng.standard_normal(shape).astype(np.float32)
  return sd


def _is_counter(k):
  return k.endswith('.num_batches_tracked')


@pytest.fixture(scope='module')
def r50():
  cfg = config_lib.make_config('ytvis19')
  return cfg, checkpoints.abstract_for(cfg)


@pytest.fixture(scope='module')
def authors_sd():
  return _authors_state_dict()


def _random_variables(abstract, seed):
  rng = np.random.default_rng(seed)
  flat = {p: rng.standard_normal(x.shape).astype(np.float32)
          for p, x in checkpoints.flatten(abstract).items()}
  for p, x in flat.items():  # BatchNorm variances must be positive
    if p[-1] == 'var':
      flat[p] = np.abs(x) + 0.5
  return checkpoints.unflatten(flat)


# ------------------------------------------------------------ key coverage
def test_authors_state_dict_converts_and_round_trips(r50, authors_sd):
  cfg, abstract = r50
  variables, report = convert.convert_state_dict(
      authors_sd, cfg.model, 'iai', abstract=abstract)
  # every key consumed: converted, or a BatchNorm counter dropped on purpose
  assert report.converted + len(report.ignored) == len(authors_sd) == 463
  assert all(_is_counter(k) for k in report.ignored)
  assert report.fresh == [] and report.skipped_heads == []
  assert checkpoints.check_variables(variables, abstract) == []
  n_params = sum(x.size for x in checkpoints.flatten(variables['params']).values())
  assert n_params == 45_433_337
  # converting back reproduces the state dict exactly
  back = convert.export_state_dict(variables, cfg.model, 'iai')
  assert set(back) == {k for k in authors_sd if not _is_counter(k)}
  for k, x in back.items():
    assert x.shape == authors_sd[k].shape, k
    np.testing.assert_array_equal(x, authors_sd[k], err_msg=k)
  # a few layouts spelled out
  p = variables['params']
  w = authors_sd['bbox_head.cls_convs.0.conv.weight']
  np.testing.assert_array_equal(p['head']['cls_convs_0']['conv']['kernel'],
                                w.transpose(2, 3, 1, 0))
  w = authors_sd['lstt.LSTT.layers.0.linear1.weight']
  np.testing.assert_array_equal(p['association']['layers_0']['linear1']['kernel'], w.T)
  rel = authors_sd['lstt.LSTT.layers.0.short_term_attn.relative_emb.weight']
  # output channel head*225 + offset reads input channels head*128 .. +127
  np.testing.assert_array_equal(
      p['association']['layers_0']['rel_kernel'][1, 5, 17], rel[225 + 17, 5, 0, 0])
  assert p['head']['scales'][3] == authors_sd['bbox_head.scales.3.scale']
  np.testing.assert_array_equal(
      variables['batch_stats']['backbone']['layer2_0']['downsample_bn']['var'],
      authors_sd['backbone.layer2.0.downsample.1.running_var'])
  np.testing.assert_array_equal(
      p['mask_branch']['tower_out']['bias'], authors_sd['bbox_head.mask_head.4.bias'])


def test_leftover_missing_and_mismatch_stop_the_conversion(r50, authors_sd):
  cfg, abstract = r50
  sd = dict(authors_sd)
  sd['bbox_head.extra_conv.weight'] = np.zeros((3, 3), np.float32)
  del sd['lstt.LSTT.layers.0.norm3.bias']
  sd['neck.fpn_convs.1.conv.weight'] = np.zeros((256, 128, 3, 3), np.float32)
  with pytest.raises(convert.ConversionError) as e:
    convert.convert_state_dict(sd, cfg.model, 'iai', abstract=abstract)
  msg = str(e.value)
  assert 'bbox_head.extra_conv.weight' in msg and 'no place in the model' in msg
  assert 'lstt.LSTT.layers.0.norm3.bias' in msg and 'missing' in msg
  assert 'neck.fpn_convs.1.conv.weight (256, 128, 3, 3)' in msg
  assert '(model: (256, 256, 3, 3))' in msg
  # --skip_mismatched_heads does not excuse anything but the heads
  with pytest.raises(convert.ConversionError):
    convert.convert_state_dict(sd, cfg.model, 'iai', skip_mismatched_heads=True,
                               abstract=abstract)


def test_skip_mismatched_heads_for_another_dataset(authors_sd):
  ovis = config_lib.make_config('ovis')  # 25 classes, 25 ID slots
  abstract = checkpoints.abstract_for(ovis)
  with pytest.raises(convert.ConversionError) as e:
    convert.convert_state_dict(authors_sd, ovis.model, 'iai', abstract=abstract)
  assert '--skip_mismatched_heads' in str(e.value)
  assert 'bbox_head.conv_cls.weight (40, 256, 3, 3) (model: (25, 256, 3, 3))' in str(e.value)
  variables, report = convert.convert_state_dict(
      authors_sd, ovis.model, 'iai', skip_mismatched_heads=True, abstract=abstract)
  assert report.fresh == ['params/association/id_bank', 'params/head/conv_cls',
                          'params/head/conv_id']
  assert len(report.skipped_heads) == 3
  assert checkpoints.check_variables(variables, abstract, partial=True) == []
  assert 'conv_cls' not in variables['params']['head']
  assert 'controller' in variables['params']['head']


def test_condinst_subset(r50, authors_sd):
  cfg, abstract = r50
  new_parts = ('lstt.', 'encoder_projector.', 'backbone_projector.',
               'bbox_head.id_convs.', 'bbox_head.conv_id.')
  coco = {k: v for k, v in authors_sd.items() if not k.startswith(new_parts)}
  coco['bbox_head.conv_cls.weight'] = np.zeros((80, 256, 3, 3), np.float32)
  coco['bbox_head.conv_cls.bias'] = np.zeros((80,), np.float32)
  with pytest.raises(convert.ConversionError, match='skip_mismatched_heads'):
    convert.convert_state_dict(coco, cfg.model, 'condinst', abstract=abstract)
  variables, report = convert.convert_state_dict(
      coco, cfg.model, 'condinst', skip_mismatched_heads=True, abstract=abstract)
  assert report.fresh == ['params/association', 'params/head/conv_cls',
                          'params/head/conv_id', 'params/head/id_convs_0']
  assert report.converted + len(report.ignored) == len(coco)
  assert checkpoints.check_variables(variables, abstract, partial=True) == []
  # the association block's keys are not part of a CondInst checkpoint
  with pytest.raises(convert.ConversionError, match='encoder_projector.weight'):
    convert.convert_state_dict(
        dict(coco, **{'encoder_projector.weight': authors_sd['encoder_projector.weight']}),
        cfg.model, 'condinst', skip_mismatched_heads=True, abstract=abstract)


def test_torchvision_resnet_keys(r50, authors_sd):
  cfg, abstract = r50
  tv = {k[len('backbone.'):]: v for k, v in authors_sd.items()
        if k.startswith('backbone.')}
  tv['fc.weight'] = np.zeros((1000, 2048), np.float32)
  tv['fc.bias'] = np.zeros((1000,), np.float32)
  variables, report = convert.convert_state_dict(tv, cfg.model,
                                                 'torchvision-resnet',
                                                 abstract=abstract)
  assert report.ignored['fc.weight'] == 'ImageNet classifier'
  assert report.converted == 265 and report.fresh == [
      'batch_stats/mask_branch', 'params/association', 'params/fpn',
      'params/head', 'params/mask_branch']
  assert checkpoints.check_variables(variables['params']['backbone'],
                                 abstract['params']['backbone']) == []
  del tv['layer3.5.bn2.running_mean']
  with pytest.raises(convert.ConversionError, match='layer3.5.bn2.running_mean'):
    convert.convert_state_dict(tv, cfg.model, 'torchvision-resnet', abstract=abstract)


def test_r101_and_ovis_keys_follow_the_same_naming():
  cfg = config_lib.make_config('ovis', 'r101')
  entries, _ = convert.layout_entries(cfg.model, 'iai')
  keys = {e.key for e in entries}
  assert 'backbone.layer3.22.conv3.weight' in keys
  assert 'backbone.layer3.23.conv3.weight' not in keys
  ref = {r['key'] for r in _tsv_rows() if not _is_counter(r['key'])}
  assert {k for k in keys if not k.startswith('backbone.layer3.')} == {
      k for k in ref if not k.startswith('backbone.layer3.')}


# ------------------------------------------------------------ layer parity
def _t(x):
  return torch.from_numpy(np.asarray(x))


def _nchw_to_nhwc(x):
  return x.detach().numpy().transpose(0, 2, 3, 1)


def _close(got, want, rel=1e-4):
  got, want = np.asarray(got), np.asarray(want)
  scale = max(float(np.abs(want).max()), 1e-6)
  diff = float(np.abs(got - want).max())
  assert diff <= rel * scale, f'max abs diff {diff:.3g} vs scale {scale:.3g}'
  print(f'max abs diff {diff:.2e} (max abs {scale:.2e})')
  return diff


@pytest.mark.parametrize('cin,cout,k,stride,groups,bias', [
    (8, 16, 3, 1, 1, True),    # head / FPN conv
    (8, 12, 3, 2, 1, False),   # strided, no bias (backbone)
    (8, 12, 1, 1, 1, True),    # 1x1 (projectors, lateral)
    (8, 16, 3, 1, 4, True),    # grouped
    (16, 16, 5, 1, 16, False),  # depthwise 5x5 (LSTT FFN)
])
def test_conv_parity(cin, cout, k, stride, groups, bias):
  g = torch.Generator().manual_seed(0)
  conv = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2,
                         groups=groups, bias=bias)
  x = torch.randn(2, cin, 13, 11, generator=g)
  with torch.no_grad():
    want = _nchw_to_nhwc(conv(x))
  mod = nn.Conv(cout, (k, k), strides=(stride, stride),
                padding=((k // 2, k // 2), (k // 2, k // 2)),
                feature_group_count=groups, use_bias=bias)
  shape = (k, k, cin // groups, cout)
  params = {'kernel': convert.to_flax('conv', conv.weight.detach().numpy(), shape)}
  if bias:
    params['bias'] = convert.to_flax('vector', conv.bias.detach().numpy(), (cout,))
  got = mod.apply({'params': params}, jnp.asarray(_nchw_to_nhwc(x)))
  _close(got, want)
  # the model's own matmul / shifted-add forms of the same convs, if present
  if k == 1 and stride == 1 and groups == 1 and hasattr(L, 'Conv1x1'):
    got = L.Conv1x1(cout, use_bias=bias).apply({'params': params},
                                               jnp.asarray(_nchw_to_nhwc(x)))
    _close(got, want)
  if groups == cin == cout and not bias and hasattr(L, 'DepthwiseConv'):
    got = L.DepthwiseConv(k).apply({'params': params},
                                   jnp.asarray(_nchw_to_nhwc(x)))
    _close(got, want)


def test_linear_layernorm_groupnorm_parity():
  g = torch.Generator().manual_seed(1)
  lin = torch.nn.Linear(24, 40)
  x = torch.randn(3, 7, 24, generator=g)
  with torch.no_grad():
    want = lin(x).numpy()
  params = {'kernel': convert.to_flax('linear', lin.weight.detach().numpy(), (24, 40)),
            'bias': convert.to_flax('vector', lin.bias.detach().numpy(), (40,))}
  _close(nn.Dense(40).apply({'params': params}, jnp.asarray(x.numpy())), want)

  ln = torch.nn.LayerNorm(24)
  with torch.no_grad():
    ln.weight.copy_(torch.rand(24, generator=g) + 0.5)
    ln.bias.copy_(torch.randn(24, generator=g))
    want = ln(x).numpy()
  params = {'scale': ln.weight.detach().numpy(), 'bias': ln.bias.detach().numpy()}
  _close(nn.LayerNorm(epsilon=1e-5).apply({'params': params}, jnp.asarray(x.numpy())),
         want)

  gn = torch.nn.GroupNorm(8, 32)
  x = torch.randn(2, 32, 6, 5, generator=g) * 3 + 1
  with torch.no_grad():
    gn.weight.copy_(torch.rand(32, generator=g) + 0.5)
    gn.bias.copy_(torch.randn(32, generator=g))
    want = _nchw_to_nhwc(gn(x))
  params = {'scale': gn.weight.detach().numpy(), 'bias': gn.bias.detach().numpy()}
  got = nn.GroupNorm(num_groups=8, epsilon=1e-5).apply(
      {'params': params}, jnp.asarray(_nchw_to_nhwc(x)))
  _close(got, want)


def _random_bn(bn, g):
  with torch.no_grad():
    bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
    bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
    bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)


def _bn_variables(bn):
  c = (bn.num_features,)
  t = lambda a: convert.to_flax('vector', a.detach().numpy(), c)
  return ({'scale': t(bn.weight), 'bias': t(bn.bias)},
          {'mean': t(bn.running_mean), 'var': t(bn.running_var)})


def test_frozen_batchnorm_parity():
  g = torch.Generator().manual_seed(2)
  bn = torch.nn.BatchNorm2d(16).eval()
  _random_bn(bn, g)
  x = torch.randn(2, 16, 5, 7, generator=g)
  with torch.no_grad():
    want = _nchw_to_nhwc(bn(x))
  params, stats = _bn_variables(bn)
  got = resnet.FrozenBatchNorm().apply(
      {'params': params, 'batch_stats': stats}, jnp.asarray(_nchw_to_nhwc(x)))
  _close(got, want)


def test_gct_and_id_bank_parity():
  g = torch.Generator().manual_seed(3)
  c, eps = 12, 1e-5
  alpha = torch.rand(1, c, 1, 1, generator=g) + 0.5
  gamma = torch.randn(1, c, 1, 1, generator=g)
  beta = torch.randn(1, c, 1, 1, generator=g)
  x = torch.randn(2, c, 6, 5, generator=g)
  emb = torch.sqrt(x.pow(2).sum((2, 3), keepdim=True) + eps) * alpha
  norm = gamma / torch.sqrt(emb.pow(2).mean(1, keepdim=True) + eps)
  want = _nchw_to_nhwc(x * (1 + torch.tanh(emb * norm + beta)))
  params = {n: convert.to_flax('gct', v.numpy(), (c,))
            for n, v in (('alpha', alpha), ('gamma', gamma), ('beta', beta))}
  _close(L.GCT().apply({'params': params}, jnp.asarray(_nchw_to_nhwc(x))), want)

  # ID bank: 33x33 conv, stride 32, padding 16 over the one-hot ID mask
  n_ids, d = 4, 16
  bank = torch.nn.Conv2d(n_ids + 1, d, 33, stride=32, padding=16)
  labels = torch.randint(0, n_ids + 1, (2, 64, 96), generator=g)
  onehot = F.one_hot(labels, n_ids + 1).permute(0, 3, 1, 2).float()
  with torch.no_grad():
    want = _nchw_to_nhwc(bank(onehot))
  params = {'kernel': convert.to_flax('conv', bank.weight.detach().numpy(),
                                      (33, 33, n_ids + 1, d)),
            'bias': bank.bias.detach().numpy()}
  got = association.IDBank(n_ids, d).apply(
      {'params': params}, jnp.asarray(_nchw_to_nhwc(onehot)))
  assert got.shape == (2, 2, 3, d)
  _close(got, want)


def test_local_attention_relative_bias_and_value_bias_parity():
  """The grouped 1x1 relative-bias conv and V_bias, in the authors' layouts."""
  g = torch.Generator().manual_seed(4)
  heads, dh, max_dis, h, w = 2, 8, 7, 10, 12
  c, win = heads * dh, (2 * max_dis + 1) ** 2
  q, k, v = (torch.randn(1, c, h, w, generator=g) for _ in range(3))
  rel_conv = torch.nn.Conv2d(c, heads * win, 1, groups=heads)
  v_bias = torch.randn(1, heads, dh, win, 1, generator=g)
  with torch.no_grad():
    rel = rel_conv(q).view(1, heads, win, h * w)
    unfold = lambda x: F.unfold(x, 2 * max_dis + 1, padding=max_dis)
    uk = unfold(k).view(1, heads, dh, win, h * w)
    uv = unfold(v).view(1, heads, dh, win, h * w)
    inside = unfold(torch.ones(1, 1, h, w)).view(1, 1, win, h * w) > 0
    logits = (q.view(1, heads, dh, 1, h * w) / math.sqrt(dh) * uk).sum(2) + rel
    attn = logits.masked_fill(~inside, float('-inf')).softmax(2)
    want = (attn.unsqueeze(2) * (uv + v_bias[0])).sum(3)  # (1, heads, dh, hw)
  want = want.numpy().transpose(0, 3, 1, 2)  # (1, hw, heads, dh)

  rel_kernel = convert.to_flax('rel_kernel', rel_conv.weight.detach().numpy(),
                               (heads, dh, win))
  rel_bias = convert.to_flax('rel_bias', rel_conv.bias.detach().numpy(), (heads, win))
  value_bias = convert.to_flax('value_bias', v_bias.numpy(), (heads, dh, win))
  seq = lambda x: jnp.asarray(x.numpy().transpose(0, 2, 3, 1).reshape(1, h * w, heads, dh))
  qj, kj, vj = seq(q), seq(k), seq(v)
  # as LSTTLayer computes the query-dependent relative bias
  rel_j = jnp.einsum('bqhc,hco->bqho', qj, rel_kernel) + rel_bias
  got = L.local_attention(qj, kj, vj, rel_j, value_bias, (h, w), max_dis)
  _close(got, want)


# ------------------------------------------------------------ ResNet-50
class _TorchBottleneck(torch.nn.Module):
  def __init__(self, cin, planes, stride):
    super().__init__()
    cout = planes * 4
    self.conv1 = torch.nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = torch.nn.BatchNorm2d(planes)
    self.conv2 = torch.nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = torch.nn.BatchNorm2d(planes)
    self.conv3 = torch.nn.Conv2d(planes, cout, 1, bias=False)
    self.bn3 = torch.nn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = torch.nn.Sequential(
          torch.nn.Conv2d(cin, cout, 1, stride, bias=False),
          torch.nn.BatchNorm2d(cout))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class _TorchResNet50(torch.nn.Module):
  """torchvision's key names: conv1, bn1, layer1..4.{i}.*, fc."""

  def __init__(self):
    super().__init__()
    self.conv1 = torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = torch.nn.BatchNorm2d(64)
    cin = 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
      blocks = []
      for b in range(n):
        blocks.append(_TorchBottleneck(cin, planes, 2 if b == 0 and i > 0 else 1))
        cin = planes * 4
      setattr(self, f'layer{i + 1}', torch.nn.Sequential(*blocks))
    self.fc = torch.nn.Linear(2048, 1000)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
    c2 = self.layer1(x)
    c3 = self.layer2(c2)
    c4 = self.layer3(c3)
    return {'c3': c3, 'c4': c4, 'c5': self.layer4(c4)}


def test_resnet50_backbone_parity(r50):
  cfg, abstract = r50
  torch.manual_seed(0)
  g = torch.Generator().manual_seed(5)
  net = _TorchResNet50().eval()
  for m in net.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      _random_bn(m, g)
  x = torch.randn(2, 3, 64, 64, generator=g)
  with torch.no_grad():
    want = {k: _nchw_to_nhwc(v) for k, v in net(x).items()}
  sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
  variables, report = convert.convert_state_dict(
      sd, cfg.model, 'torchvision-resnet', abstract=abstract)
  assert report.converted + len(report.ignored) == len(sd)
  bb = {'params': variables['params']['backbone'],
        'batch_stats': variables['batch_stats']['backbone']}
  got = jax.jit(resnet.ResNet(50).apply)(bb, jnp.asarray(_nchw_to_nhwc(x)))
  diffs = {}
  for k in ('c3', 'c4', 'c5'):
    assert got[k].shape == want[k].shape
    diffs[k] = _close(got[k], want[k])
  print('ResNet-50 max abs diff vs torch:', {k: f'{d:.2e}' for k, d in diffs.items()},
        'scale:', {k: f'{np.abs(want[k]).max():.2e}' for k in want})


# ------------------------------------------------------------ files
def _save_pth(path, state_dict, wrap=True):
  sd = {k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}
  torch.save({'state_dict': sd, 'meta': {'epoch': 12, 'CLASSES': ('a', 'b')}}
             if wrap else sd, path)


@pytest.fixture(scope='module')
def tiny():
  cfg = config_lib.load_config_file(os.path.join(REPO, TINY))
  return cfg, checkpoints.abstract_for(cfg)


def test_cli_writes_a_checkpoint_that_loads(tmp_path, tiny):
  cfg, abstract = tiny
  variables = _random_variables(abstract, seed=1)
  sd = convert.export_state_dict(variables, cfg.model, 'iai')
  sd['backbone.bn1.num_batches_tracked'] = np.array(3, np.int64)
  pth = tmp_path / 'iai_tiny.pth'
  _save_pth(pth, sd)
  out = tmp_path / 'converted'
  cmd = [sys.executable, '-m', 'iai_jax.convert', '--source=iai',
         f'--input={pth}', f'--config={os.path.join(REPO, TINY)}',
         f'--output={out}']
  run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'converted' in run.stdout and 'BatchNorm counter' in run.stdout
  meta = checkpoints.read_meta(str(out))
  assert meta['source'] == 'iai' and meta['config'].endswith('ytvis19.py:tiny')
  assert meta['fresh'] == []
  loaded = checkpoints.load_variables(str(out), cfg)
  for p, x in checkpoints.flatten(variables).items():
    np.testing.assert_array_equal(checkpoints.flatten(loaded)[p], x)
  # a second run refuses to overwrite; a mismatching config names the problem
  with pytest.raises(FileExistsError, match='--overwrite'):
    convert.convert_file('iai', str(pth), cfg, str(out))
  other = config_lib.make_config('ytvis19', 'tiny')
  with other.unlocked():
    other.model.num_classes = 7
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match='does not fit the config.*conv_cls'):
    checkpoints.load_variables(str(out), other)


def test_loading_never_runs_code_from_the_file(tmp_path, tiny):
  marker = tmp_path / 'was_run'

  class Payload:
    def __reduce__(self):
      return (open, (str(marker), 'w'))

  pth = tmp_path / 'evil.pth'
  torch.save({'state_dict': {'backbone.conv1.weight': torch.zeros(1)},
              'meta': Payload()}, pth)
  with pytest.raises(convert.ConversionError, match='weights_only=True'):
    convert.load_torch_state_dict(str(pth))
  assert not marker.exists()


def test_init_from_condinst_keeps_fresh_id_parts(tmp_path, tiny):
  cfg, abstract = tiny
  pretrained = _random_variables(abstract, seed=2)
  fresh = _random_variables(abstract, seed=3)
  sd = convert.export_state_dict(pretrained, cfg.model, 'condinst')
  assert not any(k.startswith(('lstt.', 'encoder_projector', 'bbox_head.conv_id'))
                 for k in sd)
  pth = tmp_path / 'condinst_coco.pth'
  _save_pth(pth, sd)
  out = str(tmp_path / 'coco')
  lines = []
  convert.convert_file('condinst', str(pth), cfg, out, config_name=TINY,
                       log=lines.append)
  assert any('params/association' in l and 'fresh' in l for l in lines)
  # a partial checkpoint is not a complete model ...
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match='does not fit the config.*missing: params/association.*init_from'):
    checkpoints.load_variables(out, cfg)
  # ... but initialises training: loaded parts from it, the rest fresh
  with cfg.unlocked():
    cfg.init_from = out
  logs = []
  merged = checkpoints.init_from(cfg, fresh, log=logs.append)
  assert len(logs) == 1 and 'kept their fresh initialisation' in logs[0]
  assert 'params/association' in logs[0] and 'params/head/conv_id' in logs[0]
  m, p, f = (checkpoints.flatten(t) for t in (merged, pretrained, fresh))
  assert set(m) == set(f)
  for path in m:
    rest = '/'.join(path[1:])
    src = f if rest.startswith(('association', 'head/id_convs_', 'head/conv_id')) else p
    np.testing.assert_array_equal(m[path], src[path], err_msg=rest)
  # nothing to load: unchanged
  with cfg.unlocked():
    cfg.init_from = ''
  assert checkpoints.init_from(cfg, fresh, log=logs.append) == fresh


def test_merge_init_rejects_unexpected_gaps(tiny):
  _, abstract = tiny
  fresh = _random_variables(abstract, seed=4)
  loaded = _random_variables(abstract, seed=5)
  del loaded['params']['fpn']
  with pytest.raises(checkpoints.CheckpointMismatchError, match='missing: params/fpn'):
    checkpoints.merge_init(fresh, loaded)
  merged, kept = checkpoints.merge_init(fresh, loaded, allow_missing_prefixes=['fpn'])
  assert kept == ['params/fpn']
  loaded['params']['head']['conv_cls']['bias'] = np.zeros(3, np.float32)
  with pytest.raises(checkpoints.CheckpointMismatchError, match='conv_cls/bias'):
    checkpoints.merge_init(fresh, loaded, allow_missing_prefixes=['fpn'])


# ------------------------------------------------------------ issue 17
def test_damaged_input_files_are_one_line_errors(tmp_path, tiny):
  cfg, abstract = tiny
  empty = tmp_path / 'empty.pth'
  empty.write_bytes(b'')
  text = tmp_path / 'notes.pth'
  text.write_text('these are not weights\n')
  variables = _random_variables(abstract, seed=3)
  sd = convert.export_state_dict(variables, cfg.model, 'iai')
  cut = tmp_path / 'cut.pth'
  _save_pth(cut, sd)
  data = cut.read_bytes()
  cut.write_bytes(data[:len(data) // 2])
  key = 'backbone.conv1.weight'
  sd[key] = np.array(sd[key], copy=True)
  sd[key].flat[0] = np.nan
  nan = tmp_path / 'nan.pth'
  _save_pth(nan, sd)
  for path, match in (
      (empty, r'empty.pth is empty \(0 bytes\): an interrupted download'),
      (text, r'notes.pth is not a .*checkpoint'),
      (cut, r'cut.pth is not a .*checkpoint'),
      (nan, r'nan.pth: 1 tensors hold NaN or infinite values \(backbone.conv1.'
            r'weight\): the file is damaged or comes from a diverged run')):
    with pytest.raises(convert.ConversionError, match=match) as e:
      convert.load_torch_state_dict(str(path))
    assert '\n' not in str(e.value)
  # through the command: one line, exit 1, the old output untouched
  out = tmp_path / 'out'
  run = subprocess.run(
      [sys.executable, '-m', 'iai_jax.convert', '--source=iai',
       f'--input={empty}', f'--config={os.path.join(REPO, TINY)}',
       f'--output={out}'], capture_output=True, text=True, cwd=REPO)
  assert run.returncode == 1
  assert run.stderr == (f'error: {empty} is empty (0 bytes): an interrupted '
                        'download or copy? Fetch the file again\n')
  assert not out.exists()
