"""The IAI model: backbone -> Hybrid Association Block -> FPN -> CondInst heads.

Four pure pieces, reached with ``model.apply(variables, ..., method=...)``
and strung together over time by :mod:`iai_jax.models.rollout`:

* :meth:`IAI.encode`: backbone on any number of frames at once;
* :meth:`IAI.associate`: one association step of one frame (memory in, C5'
  and the frame's cache out);
* :meth:`IAI.write_memory`: the cache and the frame's ID mask -> the next
  memory;
* :meth:`IAI.decode`: FPN and heads on any number of frames at once.

Parameter groups (top level of ``params``): backbone, association, fpn,
head, mask_branch.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from iai_jax.models import backbones, locations, rollout
from iai_jax.models.association import AssociationBlock, Memory
from iai_jax.models.condinst import CondInstHead, FPN, MaskBranch

DTYPES = rollout.DTYPES


class IAI(nn.Module):
  config: ml_collections.FrozenConfigDict  # the ``model`` section

  def setup(self):
    m = self.config
    dt = DTYPES[m.dtype]
    a = m.association
    backbone = backbones.get(m)
    self.backbone = backbone.build(dt)
    self.association = AssociationBlock(
        num_ids=m.max_obj_num, c5_channels=backbone.channels['c5'],
        d_model=a.d_model, num_layers=a.num_layers, self_heads=a.self_heads,
        att_heads=a.att_heads, ffn_dim=a.ffn_dim, gn_groups=a.gn_groups,
        max_dis=a.max_dis, droppath=a.droppath,
        id_bank_kernel=a.id_bank_kernel, global_slots=a.global_slots,
        global_interval=a.global_interval,
        use_global_memory=bool(a.use_global_memory),
        use_local_memory=bool(a.use_local_memory), dtype=dt)
    self.fpn = FPN(m.fpn.channels, dtype=dt)
    self.head = CondInstHead(
        num_classes=m.num_classes, num_ids=m.max_obj_num,
        strides=locations.STRIDES, channels=m.head.channels,
        num_convs=m.head.num_convs, num_id_convs=m.head.id_convs,
        gn_groups=m.head.gn_groups, prior_prob=m.head.prior_prob, dtype=dt)
    self.mask_branch = MaskBranch(
        m.mask_branch.channels, m.mask_branch.num_convs,
        momentum=m.mask_branch.bn_momentum,
        out_stride=m.mask_branch.out_stride,
        upsample_before_tower=m.mask_branch.upsample_before_tower, dtype=dt)

  def encode(self, images):
    """(F, H, W, 3) normalised frames -> {'c3', 'c4', 'c5'}."""
    return self.backbone(images)

  def associate(self, c5, memory: Memory, deterministic: bool = True):
    """(B, h, w, C5), memory -> (C5', cache). See AssociationBlock."""
    return self.association(c5, memory, deterministic)

  def write_memory(self, memory: Memory, cache, id_mask, new_instance):
    return self.association.write(memory, cache, id_mask, new_instance)

  def decode(self, c3, c4, c5p, train: bool = False, time_steps: int = 1):
    """FPN + heads. Returns per-level lists 'cls', 'id', 'reg', 'ctr',
    'ctrl' of (F, h_l, w_l, .) and 'mask_feats' (F, H/s, W/s, 8), s the
    mask branch's out_stride (8 by default). In training the F frames are
    clips of ``time_steps`` frames (clip-major): the mask branch's BatchNorm
    takes each time step's statistics."""
    feats = self.fpn([c3, c4, c5p])
    out = self.head(feats)
    out['mask_feats'] = self.mask_branch(feats[:3], train=train,
                                         time_steps=time_steps)
    return out

  def __call__(self, images, train: bool = False):
    """One frame per batch element through every part (used by ``init``)."""
    return rollout.init_pass(self, images, self.config, train)


def build_model(model_cfg) -> IAI:
  return IAI(ml_collections.FrozenConfigDict(model_cfg))


def _init(model: IAI, rng, image_size):
  images = jnp.zeros((1, *image_size, 3), jnp.float32)
  return model.init({'params': rng, 'dropout': rng}, images)


def init_variables(model: IAI, rng, image_size=(64, 64)):
  """Parameters and BatchNorm statistics (shapes do not depend on size)."""
  return jax.jit(_init, static_argnums=(0, 2))(model, rng, tuple(image_size))


def abstract_variables(model: IAI, image_size=(64, 64)):
  """Shapes and dtypes of the variables, without allocating them."""
  return jax.eval_shape(lambda r: _init(model, r, tuple(image_size)),
                        jax.random.key(0))


def trainable_mask(params, model_cfg):
  """Pytree of bools: False for the parameters the backbone freezes."""
  mask = dict(jax.tree_util.tree_map(lambda _: True, params))
  frozen = backbones.get(model_cfg).frozen_mask(params['backbone'])
  mask['backbone'] = jax.tree_util.tree_map(lambda f: not f, frozen)
  return mask


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
