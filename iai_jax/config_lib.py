"""Loading, varying and checking the ml_collections configs of iai_jax.

The recipe's values live in ``configs/`` (``configs/default.py`` and one
file a dataset); this module holds the machinery:

* :func:`load_config_file` / :func:`make_config`: ``path[:variants]`` or a
  config's name (``ytvis19``) -> the config, what ``--config=`` does;
* :func:`apply_variants` / :func:`finalize`: the variants after the colon
  (``configs/ytvis19.py:r101,ms``), each a dict of dotted keys, applied in
  order; then :func:`check_config` and the lock;
* :func:`check_config`: the semantic checks (a bad value is a ValueError
  that names the key). The command-line entry points run it again after
  the ``--config.key=value`` overrides (:func:`parse_command_line_config`),
  before any dataset or model work;
* :func:`check_override_key`: an unknown key is an error that names it.

A finished config is locked: assigning a key that does not exist raises.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable, Mapping

import ml_collections

from iai_jax.validate import is_int

# configs/ next to the package in a checkout (pip install -e .)
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'configs')

TRACKERS = ('id_head', 'mask_iou')


class ConfigError(ValueError):
  """A config value that cannot work here (e.g. a mesh for another number
  of devices); the message names the key and the fix."""


# ----------------------------------------------------------------- loading
def load_module(path: str):
  """Import a Python file by path (a config file and its siblings)."""
  name = '_iai_config_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Load ``path/to/config.py[:variants]`` the way ``--config=`` does."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise ValueError(f'config file {path!r} not found; pass e.g. '
                     '--config=configs/ytvis19.py')
  return load_module(path).get_config(arg or None)


def make_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """``configs/<name>.py`` with the comma-separated variants in ``arg``."""
  path = os.path.join(CONFIGS_DIR, f'{name}.py')
  if not os.path.isfile(path):
    known = sorted(f[:-3] for f in os.listdir(CONFIGS_DIR)
                   if f.endswith('.py') and f != 'default.py')
    raise ValueError(f'unknown config {name!r}; the configs in {CONFIGS_DIR} '
                     f'are: {", ".join(known)}')
  return load_config_file(path + (f':{arg}' if arg else ''))


# ----------------------------------------------------------------- variants
def set_value(config: ml_collections.ConfigDict, dotted: str, value) -> None:
  """``config.a.b.c = value`` for ``dotted`` = 'a.b.c' (the key must exist)."""
  check_override_key(config, dotted)
  *parents, leaf = dotted.split('.')
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value


def apply_variants(config: ml_collections.ConfigDict, arg: str | None,
                   variants: Mapping[str, Mapping[str, Any] | Callable]) -> None:
  """Apply the comma-separated variants of ``arg`` in order.

  A variant is a dict {dotted key: value} or a function of the config.
  """
  for name in [v.strip() for v in (arg or '').split(',') if v.strip()]:
    if name not in variants:
      raise ValueError(f'unknown config variant {name!r}; known variants: '
                       f'{", ".join(variants)}')
    variant = variants[name]
    if callable(variant):
      variant(config)
    else:
      for key, value in variant.items():
        set_value(config, key, value)


def finalize(config: ml_collections.ConfigDict, arg: str | None = None,
             variants: Mapping[str, Any] | None = None
             ) -> ml_collections.ConfigDict:
  """Apply ``arg``'s variants, check the result and lock it."""
  apply_variants(config, arg, variants or {})
  check_config(config)
  config.lock()
  return config


# ----------------------------------------------------------------- checks
def check_config(c: ml_collections.ConfigDict) -> None:
  """Raise ValueError, naming the key, for a value that cannot work."""
  from iai_jax.models import backbones
  m = c.model
  if m.dtype not in ('float32', 'bfloat16'):
    raise ValueError(f'model.dtype={m.dtype!r}: use float32 or bfloat16')
  if m.num_classes < 1:
    raise ValueError(f'model.num_classes={m.num_classes} must be >= 1')
  if m.max_obj_num < 2:
    raise ValueError('model.max_obj_num must be >= 2 (one ID plus "new")')
  backbone = backbones.get(m)
  backbone.check()
  a = m.association
  for name, heads in (('self_heads', a.self_heads), ('att_heads', a.att_heads)):
    if heads < 1 or a.d_model % heads:
      raise ValueError(f'model.association.d_model={a.d_model} is not '
                       f'divisible by model.association.{name}={heads}')
  c5 = backbone.channels['c5']
  if 2 * a.d_model >= c5:
    raise ValueError('model.association.d_model is too large: C5\' = '
                     '[X, LSTT(X), classification projection] must keep the '
                     f'C5 width {c5}')
  if a.global_slots < 1:
    raise ValueError('model.association.global_slots must be >= 1')
  for name, ch, groups in (('head.channels', m.head.channels, m.head.gn_groups),
                           ('association.ffn_dim', a.ffn_dim, a.gn_groups)):
    if ch % groups:
      raise ValueError(f'model.{name}={ch} is not divisible by its '
                       f'GroupNorm groups ({groups})')
  if m.mask_branch.out_stride not in (4, 8):
    raise ValueError(f'model.mask_branch.out_stride={m.mask_branch.out_stride}: '
                     'choose 8 (CondInst) or 4 (finer masks on small frames)')
  if c.dataset.synthetic.kind not in ('tracks', 'reid'):
    raise ValueError(f'dataset.synthetic.kind={c.dataset.synthetic.kind!r}: '
                     'choose tracks or reid')
  if c.infer.tracker not in TRACKERS:
    raise ValueError(f'infer.tracker={c.infer.tracker!r}: choose one of '
                     f'{", ".join(TRACKERS)}')
  if not 0.0 <= c.infer.mask_iou_threshold <= 1.0:
    raise ValueError('infer.mask_iou_threshold must be in [0, 1]')
  if c.input.size_divisor % 32:
    raise ValueError('input.size_divisor must be a multiple of 32')
  size = c.input.size
  if (not isinstance(size, (tuple, list)) or len(size) != 2
      or not all(is_int(x) and x > 0 for x in size) or size[0] > size[1]):
    raise ValueError(f'input.size={size!r}: give (short side, long side) as '
                     'two positive integers, e.g. --config.input.size='
                     '"(360, 640)"')
  scales = c.input.train_scale_range
  if scales and not (len(scales) == 2 and all(
      len(s) == 2 and all(is_int(x) and x > 0 for x in s) for s in scales)):
    raise ValueError(f'input.train_scale_range={scales!r}: give ((long_lo, '
                     'short_lo), (long_hi, short_hi)), e.g. ((649, 360), '
                     '(960, 480)), or () for the fixed input.size')
  if c.input.train_scale_per not in ('clip', 'frame'):
    raise ValueError(f'input.train_scale_per={c.input.train_scale_per!r}: '
                     'choose clip or frame')
  for key in ('batch_size', 'clip_len', 'max_stride', 'log_every',
              'checkpoint_every', 'keep_checkpoints', 'clips_per_video'):
    value = c.train[key]
    if not is_int(value) or value < 1:
      raise ValueError(f'train.{key}={value!r} must be a positive integer')
  for key in ('steps', 'epochs', 'warmup_steps', 'data_workers',
              'max_mask_samples'):
    value = c.train[key]
    if not is_int(value) or value < 0:
      raise ValueError(f'train.{key}={value!r} must be an integer >= 0')
  mesh, axes = c.train.mesh_shape, c.train.mesh_axes
  if (not isinstance(mesh, (tuple, list)) or not isinstance(axes, (tuple, list))
      or len(mesh) != len(axes) or list(mesh).count(-1) > 1
      or not all(is_int(s) and (s >= 1 or s == -1) for s in mesh)):
    raise ValueError(f'train.mesh_shape={mesh!r} must be one positive integer '
                     f'(or one -1, "the rest") per axis of train.mesh_axes='
                     f'{axes!r}, e.g. --config.train.mesh_shape="(-1,)"')
  if c.train.steps == 0 and c.train.epochs == 0:
    raise ValueError('train.steps=0 and train.epochs=0: nothing to train; '
                     'set --config.train.steps=N or --config.train.epochs=N')
  for key in ('score_thr', 'id_thr', 'nms_iou', 'overlap_keep',
              'video_score_thr', 'mask_thr'):
    if not 0.0 <= c.infer[key] <= 1.0:
      raise ValueError(f'infer.{key}={c.infer[key]!r} must be in [0, 1]')
  for key in ('candidates_per_level', 'max_per_img'):
    if not is_int(c.infer[key]) or c.infer[key] < 1:
      raise ValueError(f'infer.{key}={c.infer[key]!r} must be a positive '
                       'integer')



def check_override_key(config: ml_collections.ConfigDict, dotted: str) -> None:
  """Raise ValueError naming ``dotted`` when it is not a key of ``config``."""
  node, walked = config, []
  for part in dotted.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      where = '.'.join(walked) or 'the top level'
      keys = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      raise ValueError(f'unknown config key {dotted!r}: {where} has no '
                       f'{part!r}; known keys there: {", ".join(keys)}')
    node = node[part]
    walked.append(part)

