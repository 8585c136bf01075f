"""Parameter table and per-frame GFLOPs of a configured IAI model."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from iai_jax import preprocess
from iai_jax.models import backbones, rollout
from iai_jax.models import iai as iai_model


def param_groups(params) -> dict:
  """{group: {'total': n, 'parts': {subgroup: n}}} over the params pytree."""
  out = {}
  for group, sub in params.items():
    parts = {k: iai_model.count_params(v) for k, v in sub.items()} if isinstance(sub, dict) else {}
    out[group] = {'total': iai_model.count_params(sub), 'parts': parts}
  return out


def frame_function(model, model_cfg):
  """The network work of one online frame (:func:`rollout.online_frame`):
  the previous frame's memory write, backbone, association with the
  memory, FPN and heads. ``pending`` is a :func:`rollout.pending_shapes`
  record."""

  def frame(variables, image, memory, pending):
    return rollout.online_frame(rollout.Applied(model, variables), memory,
                                image, pending)

  return frame


def frame_inputs(config, model, variables, batch: int = 1):
  """Shapes of :func:`frame_function`'s image, memory and pending write at
  the configured input size (a frame with a previous frame to write)."""
  h, w = preprocess.padded_size(*config.input.size, config.input.size_divisor)
  image = jax.ShapeDtypeStruct((batch, h, w, 3), jnp.float32)
  memory = jax.eval_shape(
      lambda: rollout.empty_memory(config.model, batch, (h, w)))
  c5 = (batch, h // 32, w // 32, backbones.get(config.model).channels['c5'])
  pending = rollout.pending_shapes(model, variables, config.model, c5, (h, w))
  return image, memory, pending


def gflops_per_frame(config) -> float:
  """XLA's cost analysis of :func:`frame_function` at the configured size."""
  model = iai_model.build_model(config.model)
  variables = iai_model.abstract_variables(model)
  lowered = jax.jit(frame_function(model, config.model)).lower(
      variables, *frame_inputs(config, model, variables))
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops']) / 1e9


def summary(config, with_flops: bool = True) -> dict:
  model = iai_model.build_model(config.model)
  params = iai_model.abstract_variables(model)['params']
  result = {'total_params': iai_model.count_params(params), 'groups': param_groups(params)}
  if with_flops:
    result['gflops_per_frame'] = gflops_per_frame(config)
  return result


def format_table(result: dict, config) -> str:
  h, w = preprocess.padded_size(*config.input.size, config.input.size_divisor)
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
