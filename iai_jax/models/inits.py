"""Initialisers that give the authors' PyTorch initialisation.

Where the authors' code leaves a module at PyTorch's default, or applies
``xavier_uniform_`` to a tensor whose torch layout makes its fans differ from
what Flax would compute for our layout, these give the same distribution:

* :data:`torch_default`: torch's default for conv / linear weights,
  ``kaiming_uniform_(a=sqrt(5))`` = U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
  fan_in = input channels x kernel area (our HWIO / (in, out) layouts);
* :func:`torch_default_bias`: torch's default bias, U(+-1/sqrt(fan_in));
* :func:`xavier_fans`: ``xavier_uniform_`` with the fans of the tensor's
  torch shape, U(+-sqrt(6 / (fan_in + fan_out))).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

torch_default = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in',
                                                 'uniform')


def uniform(bound: float):
  """U(-bound, bound)."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def torch_default_bias(fan_in: int):
  return uniform(1.0 / math.sqrt(fan_in))


def torch_fans(torch_shape) -> tuple[int, int]:
  """torch.nn.init's (fan_in, fan_out) of a tensor of ``torch_shape``."""
  receptive = math.prod(torch_shape[2:]) if len(torch_shape) > 2 else 1
  return torch_shape[1] * receptive, torch_shape[0] * receptive


def xavier_fans(torch_shape):
  """``xavier_uniform_`` of a tensor whose torch shape is ``torch_shape``."""
  fan_in, fan_out = torch_fans(torch_shape)
  return uniform(math.sqrt(6.0 / (fan_in + fan_out)))
