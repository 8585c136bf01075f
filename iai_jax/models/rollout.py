"""The model over time: the one place that runs IAI frame after frame.

A frame goes through four pieces of :class:`iai_jax.models.iai.IAI`:
``encode`` (backbone), ``associate`` (the frame's C5 with the memory ->
C5' and the frame's keys/values), ``write_memory`` (those keys/values and
the frame's ID mask -> the next memory) and ``decode`` (FPN and heads).
This module strings them together for every user:

* :func:`teacher_forced_clip`: training. The backbone on all B*T frames at
  once, the association scanned over the T frames with ``jax.lax.scan``
  (each frame associated, then written from its ground-truth ID mask), FPN
  and heads on the B*T frames again.
* :func:`online_frame`: the online loop (inference, the summary's cost of a
  frame, export). The *previous* frame is written first (its ID mask is
  known only after its post-processing), then the frame is encoded,
  associated and decoded: one device call per frame.
* :func:`init_pass`: one frame through every piece, which is what
  ``IAI.init`` needs to create all parameters.

``net`` is anything with the four methods: the bound module inside
``IAI.__call__``, or :class:`Applied` (the model with fixed variables,
through ``model.apply``) everywhere else.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from iai_jax.models.association import Memory, init_memory

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def empty_memory(model_cfg, batch: int, image_size) -> Memory:
  """The memory before a video's first frame, for padded ``image_size``."""
  a = model_cfg.association
  h, w = image_size
  return init_memory(a.num_layers, batch, (h // 32, w // 32), a.d_model,
                     a.global_slots, DTYPES[model_cfg.dtype])


class Applied:
  """The model's pieces with fixed ``variables`` (calls ``model.apply``).

  ``decode(..., train=True)`` runs the mask branch's BatchNorm on batch
  statistics; the updated statistics are left in :attr:`batch_stats`.
  """

  def __init__(self, model, variables):
    self.model = model
    self.variables = variables
    self.batch_stats = variables.get('batch_stats')

  def _apply(self, method, *args, **kwargs):
    return self.model.apply(self.variables, *args,
                            method=getattr(self.model, method), **kwargs)

  def encode(self, images):
    return self._apply('encode', images)

  def associate(self, c5, memory, deterministic: bool = True, rng=None):
    rngs = None if rng is None else {'dropout': rng}
    return self._apply('associate', c5, memory, deterministic, rngs=rngs)

  def write_memory(self, memory, cache, id_mask, new_instance):
    return self._apply('write_memory', memory, cache, id_mask, new_instance)

  def decode(self, c3, c4, c5p, train: bool = False, time_steps: int = 1):
    if not train:
      return self._apply('decode', c3, c4, c5p, False)
    out, updates = self._apply('decode', c3, c4, c5p, True, time_steps,
                               mutable=['batch_stats'])
    self.batch_stats = updates['batch_stats']
    return out


# ----------------------------------------------------------------- one frame
def frame_forward(net, image, memory: Memory, rng=None, train: bool = False):
  """Encode, associate and decode one frame (B, H, W, 3) normalised.

  Returns (head outputs, the frame's cache for :func:`write_frame`).
  """
  feats = net.encode(image)
  if rng is None:
    c5p, cache = net.associate(feats['c5'], memory, not train)
  else:
    c5p, cache = net.associate(feats['c5'], memory, not train, rng)
  return net.decode(feats['c3'], feats['c4'], c5p, train), cache


def write_frame(net, memory: Memory, pending) -> Memory:
  """Write the previous frame into the memory when there is one.

  ``pending``: {'cache': that frame's cache, 'id_mask': (B, H, W, N+1) its
  one-hot ID mask, 'new': (B,) bool a new instance appeared in it, 'valid':
  () bool there is such a frame (False on a video's first frame)}.
  """
  def write(mem):
    return net.write_memory(mem, pending['cache'], pending['id_mask'],
                            pending['new'])
  return jax.lax.cond(pending['valid'], write, lambda mem: mem, memory)


def online_frame(net, memory: Memory, image, pending):
  """One frame of the online loop: write the previous frame, then run this
  one. Returns (memory with the previous frame, head outputs, cache)."""
  memory = write_frame(net, memory, pending)
  out, cache = frame_forward(net, image, memory)
  return memory, out, cache


def init_pass(net, images, model_cfg, train: bool = False):
  """One frame per batch element through every piece (used by ``init``)."""
  b, h, w, _ = images.shape
  memory = empty_memory(model_cfg, b, (h, w))
  out, cache = frame_forward(net, images, memory, train=train)
  id_mask = jnp.zeros((b, h, w, model_cfg.max_obj_num + 1), jnp.float32)
  memory = net.write_memory(memory, cache, id_mask, jnp.zeros((b,), bool))
  return out, memory


def pending_shapes(model, variables, model_cfg, c5_shape, image_size):
  """Shapes of a :func:`write_frame` record for frames of ``image_size``
  (``variables`` may be abstract)."""
  b = c5_shape[0]
  memory = jax.eval_shape(lambda: empty_memory(model_cfg, b, image_size))
  c5 = jax.ShapeDtypeStruct(c5_shape, jnp.float32)
  _, cache = jax.eval_shape(
      lambda v, c, m: Applied(model, v).associate(c, m, True),
      variables, c5, memory)
  return {'cache': cache,
          'id_mask': jax.ShapeDtypeStruct(
              (b, *image_size, model_cfg.max_obj_num + 1), jnp.float32),
          'new': jax.ShapeDtypeStruct((b,), jnp.bool_),
          'valid': jax.ShapeDtypeStruct((), jnp.bool_)}


def no_pending(model, variables, model_cfg, c5_shape, image_size):
  """A 'no previous frame' record (zeros) for a video's first frame."""
  return jax.tree_util.tree_map(
      lambda s: jnp.zeros(s.shape, s.dtype),
      pending_shapes(model, variables, model_cfg, c5_shape, image_size))


# ----------------------------------------------------------------- clips
def teacher_forced_clip(net, images, model_cfg, *, id_masks, new_instance,
                        id_mask_of: Callable[[Any], Any], rng,
                        train: bool = True, unroll: bool | int = True):
  """Every frame of a batch of clips, the memory written from ground truth.

  Args:
    net: :class:`Applied` (the scan needs pure calls).
    images: (B, T, H, W, 3) normalised frames.
    id_masks: (B, T, ...) per-frame ground truth from which ``id_mask_of``
      makes the (B, H, W, N+1) one-hot ID mask of one time step (made
      inside the scan, so only one frame's one-hot mask is alive).
    new_instance: (B, T) bool, a new instance appeared in the frame.
    rng: key for drop path (one per time step is split from it).
    unroll: ``jax.lax.scan``'s unroll (True: fully unrolled).
  Returns:
    The head outputs of the B*T frames, frames folded batch-major
    (clip b's frame t at b*T + t).
  """
  b, t_len = images.shape[:2]
  feats = net.encode(images.reshape(b * t_len, *images.shape[2:]))
  fold = lambda x: x.reshape(b, t_len, *x.shape[1:]).swapaxes(0, 1)
  memory = empty_memory(model_cfg, b, images.shape[2:4])

  def cell(memory, xs):
    c5_t, id_t, new_t, rng_t = xs
    c5p, cache = net.associate(c5_t, memory, not train, rng_t)
    memory = net.write_memory(memory, cache, id_mask_of(id_t), new_t)
    return memory, c5p

  xs = (fold(feats['c5']), id_masks.swapaxes(0, 1), new_instance.swapaxes(0, 1),
        jax.random.split(rng, t_len))
  _, c5p = jax.lax.scan(cell, memory, xs, unroll=unroll)
  c5p = c5p.swapaxes(0, 1).reshape(b * t_len, *c5p.shape[2:])
  return net.decode(feats['c3'], feats['c4'], c5p, train, t_len)
