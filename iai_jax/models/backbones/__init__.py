"""Backbones, chosen by name: ``model.backbone.name`` in the config.

A backbone is one module, ``iai_jax.models.backbones.<name>`` (or any
importable module of that name), that provides

* ``build(backbone_cfg, dtype) -> flax.linen.Module``: a module whose call on
  (F, H, W, 3) normalised frames returns ``{'c3', 'c4', 'c5'}`` features at
  strides 8, 16 and 32 (the FPN and the association block take these three);
* ``channels(backbone_cfg) -> {'c3': int, 'c4': int, 'c5': int}``;
* ``is_frozen(path, backbone_cfg) -> bool``: whether the parameter at
  ``path`` (names relative to the backbone's parameters) is left out of
  training (the optimiser gives it no update);
* ``check(backbone_cfg)``: raise ``ValueError`` naming the key on a bad
  setting (called by :func:`iai_jax.config_lib.check_config`);
* ``torch_module(path) -> str``: the PyTorch module name (after
  ``backbone.``) of the module at ``path``, for converting checkpoints.

The name is looked up as ``iai_jax.models.backbones.<name>``, then as a
module of its own (``my_project.my_backbone``).

:class:`Backbone` wraps such a module for one config. Adding a backbone is
one new module here plus a config variant that sets ``model.backbone.name``
and the keys it reads (see README, "Adding a backbone").
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType
from typing import Any

import jax

STRIDES = {'c3': 8, 'c4': 16, 'c5': 32}


def module_for(name: str) -> ModuleType:
  """The module implementing backbone ``name``."""
  for path in (f'{__name__}.{name}', name):
    try:
      return importlib.import_module(path)
    except ModuleNotFoundError as e:
      if e.name != path:
        raise
  raise ValueError(f'model.backbone.name={name!r}: no module {__name__}.{name} '
                   f'or {name}; known backbones: resnet')


@dataclasses.dataclass(frozen=True)
class Backbone:
  """One configured backbone: its module, channels, strides, frozen parts."""
  config: Any  # the model.backbone section

  @property
  def impl(self) -> ModuleType:
    return module_for(self.config.name)

  def build(self, dtype):
    return self.impl.build(self.config, dtype)

  @property
  def channels(self) -> dict[str, int]:
    return dict(self.impl.channels(self.config))

  @property
  def strides(self) -> dict[str, int]:
    return dict(STRIDES)

  def check(self) -> None:
    self.impl.check(self.config)

  def is_frozen(self, path: tuple[str, ...]) -> bool:
    return bool(self.impl.is_frozen(tuple(path), self.config))

  def frozen_mask(self, params):
    """Pytree of bools over the backbone's params: True = not trained."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    return jax.tree_util.tree_unflatten(
        treedef, [self.is_frozen(tuple(p.key for p in path))
                  for path, _ in flat])

  def torch_module(self, path: tuple[str, ...]) -> str:
    return self.impl.torch_module(tuple(path))


def get(model_cfg) -> Backbone:
  """The backbone of a config's ``model`` section."""
  return Backbone(model_cfg.backbone)
