"""Parameter table and per-frame GFLOPs of a configured IAI model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from iai_jax import config_lib
from iai_jax.models import iai as iai_model


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def param_groups(params) -> dict:
  """{group: {'total': n, 'parts': {subgroup: n}}} over the params pytree."""
  out = {}
  for group, sub in params.items():
    parts = {k: _count(v) for k, v in sub.items()} if isinstance(sub, dict) else {}
    out[group] = {'total': _count(sub), 'parts': parts}
  return out


def frame_function(model):
  """The network work of one online frame: backbone, association with the
  memory, FPN and heads, and the memory write of the frame's ID mask."""

  def frame(variables, image, memory):
    feats = model.apply(variables, image, method=model.encode)
    c5p, cache = model.apply(variables, feats['c5'], memory,
                             method=model.associate)
    out = model.apply(variables, feats['c3'], feats['c4'], c5p,
                      method=model.decode)
    b, h, w, _ = image.shape
    id_mask = jnp.zeros((b, h, w, model.config.max_obj_num + 1), image.dtype)
    memory = model.apply(variables, memory, cache, id_mask,
                         jnp.zeros((b,), bool), method=model.write_memory)
    return out, memory

  return frame


def gflops_per_frame(config) -> float:
  """XLA's cost analysis of :func:`frame_function` at the configured size."""
  model = iai_model.build_model(config.model)
  h, w = config_lib.padded_size(*config.input.size, config.input.size_divisor)
  variables = iai_model.abstract_variables(model)
  image = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
  memory = jax.eval_shape(
      lambda: iai_model.empty_memory(config.model, 1, (h, w)))
  lowered = jax.jit(frame_function(model)).lower(variables, image, memory)
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops']) / 1e9


def summary(config, with_flops: bool = True) -> dict:
  model = iai_model.build_model(config.model)
  params = iai_model.abstract_variables(model)['params']
  result = {'total_params': _count(params), 'groups': param_groups(params)}
  if with_flops:
    result['gflops_per_frame'] = gflops_per_frame(config)
  return result


def format_table(result: dict, config) -> str:
  h, w = config_lib.padded_size(*config.input.size, config.input.size_divisor)
  lines = [f'{"group":<34}{"parameters":>14}', '-' * 48]
  for group, info in result['groups'].items():
    lines.append(f'{group:<34}{info["total"]:>14,}')
    for part, n in info['parts'].items():
      lines.append(f'  {part:<32}{n:>14,}')
  lines.append('-' * 48)
  lines.append(f'{"total":<34}{result["total_params"]:>14,}')
  if 'gflops_per_frame' in result:
    lines.append(f'GFLOPs per frame at {h}x{w} (XLA cost analysis): '
                 f'{result["gflops_per_frame"]:.1f}')
  return '\n'.join(lines)
