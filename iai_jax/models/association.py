"""IAI's identification bank, LSTT layer, Hybrid Association Block and memory.

The memory is an explicit pytree (:class:`Memory`) with static shapes:

* local memory: the previous frame's keys and values, per LSTT layer;
* global memory: ``global_slots`` slots of keys and values per layer, a
  validity mask and the frame index of each slot.  Slot 0 holds the first
  frame forever; later frames go to the first free slot or, when all are
  taken, replace the oldest non-first slot.  Invalid slots are masked out of
  the attention, so they have no effect on the output.

When a global write happens follows the authors' counter: the first frame is
counted as step 0 and frame t >= 1 as step t + 1; a frame is written when
``step - last_written_step >= global_interval`` or when a new instance
appeared in it (YouTube-VIS interval 3: frames 0, 2, 5, 8, ... plus the
frames with new instances).

A frame's memory entry reuses the keys K = Linear_Q(LN(x)) computed while the
frame was associated; only V = Linear_V(LN(x) + E) needs the ID embedding E
of the frame's ID mask, so writing never runs the layer again.

Ablations (``use_global_memory`` / ``use_local_memory``, paper Table 4): a
switched-off branch (global attention over the memory slots, or the local
15x15 attention over the previous frame) is not computed and adds nothing to
the layer's output, in training and in the online loop alike (both run
:meth:`AssociationBlock.__call__`). Its parameters are still created at
initialisation, so the parameter tree, its size and checkpoints are the same
for every setting, and the memory is still written as usual (it is simply
not read by the switched-off branch). With both off the block sees no memory
at all: every frame is associated alone.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from iai_jax.models import inits
from iai_jax.models import layers as L

_xavier = nn.initializers.xavier_uniform()


@flax.struct.dataclass
class Memory:
  global_k: jax.Array      # (layers, B, slots, h*w, d)
  global_v: jax.Array      # (layers, B, slots, h*w, d)
  global_valid: jax.Array  # (B, slots) bool
  global_time: jax.Array   # (B, slots) int32: frame index stored in the slot
  local_k: jax.Array       # (layers, B, h*w, d)
  local_v: jax.Array       # (layers, B, h*w, d)
  frame: jax.Array         # (B,) int32: frames written so far
  last_write: jax.Array    # (B,) int32: step of the last global write


def init_memory(num_layers: int, batch: int, size_2d: tuple[int, int],
                d_model: int, slots: int, dtype=jnp.float32) -> Memory:
  """An empty memory: the next associated frame is a video's first frame."""
  hw = size_2d[0] * size_2d[1]
  z = lambda *s: jnp.zeros(s, dtype)
  return Memory(
      global_k=z(num_layers, batch, slots, hw, d_model),
      global_v=z(num_layers, batch, slots, hw, d_model),
      global_valid=jnp.zeros((batch, slots), bool),
      global_time=jnp.zeros((batch, slots), jnp.int32),
      local_k=z(num_layers, batch, hw, d_model),
      local_v=z(num_layers, batch, hw, d_model),
      frame=jnp.zeros((batch,), jnp.int32),
      last_write=jnp.zeros((batch,), jnp.int32))


def global_write_plan(memory: Memory, new_instance: jax.Array, interval: int):
  """Which frames go to the global memory, and into which slot.

  Returns (write (B,) bool, slot (B,) int32, step (B,) int32).
  """
  slots = memory.global_valid.shape[1]
  t = memory.frame
  first = t == 0
  step = jnp.where(first, 0, t + 1)
  write = first | (step - memory.last_write >= interval) | new_instance
  if slots == 1:  # only the first frame fits
    write = first
  idx = jnp.arange(slots)
  later = idx[None, :] >= 1
  free = later & ~memory.global_valid
  first_free = jnp.argmax(free, axis=1)
  oldest = jnp.argmin(jnp.where(later, memory.global_time,
                                jnp.iinfo(jnp.int32).max), axis=1)
  slot = jnp.where(first, 0, jnp.where(free.any(axis=1), first_free, oldest))
  return write, slot.astype(jnp.int32), step


class IDBank(nn.Module):
  """Identity bank: 33x33 stride-32 conv over the one-hot ID mask (N+1 ch)."""
  num_ids: int
  d_model: int = 256
  kernel: int = 33
  dtype: Any = jnp.float32

  def setup(self):
    self.kernel_weight = self.param(
        'kernel', _xavier, (self.kernel, self.kernel, self.num_ids + 1,
                            self.d_model))
    # torch's default conv bias (the authors xavier only the weight)
    self.bias = self.param('bias', inits.torch_default_bias(
        (self.num_ids + 1) * self.kernel ** 2), (self.d_model,))

  def __call__(self, id_mask):
    """(B, H, W, N+1) -> (B, H/32, W/32, d)."""
    out = L.patch_conv(id_mask.astype(self.dtype),
                       self.kernel_weight.astype(self.dtype), 32)
    return out + self.bias.astype(self.dtype)

  def empty(self):
    """Embedding of an all-zero ID mask (before the first frame): the bias."""
    return self.bias.astype(self.dtype)


class LSTTLayer(nn.Module):
  """One long/short-term transformer layer of the HAB (d=256, FFN 1024)."""
  d_model: int = 256
  self_heads: int = 4
  att_heads: int = 2
  ffn_dim: int = 1024
  gn_groups: int = 32
  max_dis: int = 7
  droppath: float = 0.1
  drop_global: bool = True  # False for the first layer
  use_global: bool = True  # ablation: False -> the global branch adds nothing
  use_local: bool = True   # ablation: False -> the local branch adds nothing
  dtype: Any = jnp.float32

  def setup(self):
    d, dt = self.d_model, self.dtype
    # The authors xavier every LSTT weight of more than one dimension after
    # construction; biases keep torch's default U(+-1/sqrt(fan_in)).
    dense = lambda n, fan_in=d: nn.Dense(
        n, kernel_init=_xavier, bias_init=inits.torch_default_bias(fan_in),
        dtype=dt)
    ln = lambda: nn.LayerNorm(epsilon=1e-5, dtype=dt)
    # Authors' names: norm2 / self_attn.*  (self-attention),
    #                 norm1 / linear_Q / linear_V / long_term_attn.projection /
    #                 short_term_attn.*  (long/short-term attention),
    #                 norm3 / linear1 / activation.* / linear2  (FFN).
    self.norm_self = ln()
    self.self_q, self.self_k, self.self_v, self.self_out = (
        dense(d), dense(d), dense(d), dense(d))
    self.norm_lst = ln()
    self.linear_q = dense(d)
    self.linear_v = dense(d)
    self.global_out = dense(d)
    win = (2 * self.max_dis + 1) ** 2
    dh = d // self.att_heads
    # query-dependent relative bias: grouped 1x1 conv, one group per head
    # (torch weight (heads*win, dh, 1, 1), xavier'd; bias torch default)
    self.rel_kernel = self.param(
        'rel_kernel', inits.xavier_fans((self.att_heads * win, dh, 1, 1)),
        (self.att_heads, dh, win))
    self.rel_bias = self.param('rel_bias', inits.torch_default_bias(dh),
                               (self.att_heads, win))
    # torch (1, heads, dh, win, 1), xavier'd like every LSTT tensor
    self.value_bias = self.param(
        'value_bias', inits.xavier_fans((1, self.att_heads, dh, win, 1)),
        (self.att_heads, dh, win))
    self.local_out = dense(d)
    self.norm_ffn = ln()
    self.linear1 = dense(self.ffn_dim)
    self.ffn_gn = nn.GroupNorm(num_groups=self.gn_groups, epsilon=1e-5,
                               dtype=dt)
    self.ffn_gct = L.GCT()
    self.ffn_dwconv = L.DepthwiseConv(5, kernel_init=_xavier, dtype=dt)
    self.linear2 = dense(d, self.ffn_dim)

  def _heads(self, x, n):
    return x.reshape(x.shape[:-1] + (n, x.shape[-1] // n))

  def memory_value(self, value_base, id_emb):
    """V of a memory entry: Linear_V(LN(x) + E)."""
    return self.linear_v(value_base + id_emb)

  def __call__(self, x, pos, mem, first, empty_emb, size_2d,
               deterministic=True):
    """x: (B, hw, d). mem: (gk (B,M,d), gv, gvalid (B,M), lk (B,hw,d), lv).

    Returns the new x and the frame's (K, LN(x)) for its memory entry.
    """
    b, hw, d = x.shape
    h, w = size_2d
    drop = lambda y: L.drop_path(self, y, self.droppath, deterministic)
    # 1. self-attention with sine position on queries and keys
    t = self.norm_self(x)
    qk_in = t + pos.astype(t.dtype)
    q = self._heads(self.self_q(qk_in), self.self_heads)
    k = self._heads(self.self_k(qk_in), self.self_heads)
    v = self._heads(self.self_v(t), self.self_heads)
    sa = L.global_attention(q, k, v, jnp.ones((b, hw), bool))
    x = x + drop(self.self_out(sa.reshape(b, hw, d)))
    # 2. long/short-term attention
    base = self.norm_lst(x)
    cur_k = self.linear_q(base)
    self_v = self.memory_value(base, empty_emb)  # the first frame's own memory
    gk, gv, gvalid, lk, lv = mem
    firstb = first[:, None, None]
    gk = jnp.concatenate([gk, cur_k], axis=1)
    gv = jnp.concatenate([gv, self_v], axis=1)
    gvalid = jnp.concatenate(
        [gvalid, jnp.broadcast_to(first[:, None], (b, hw))], axis=1)
    lk = jnp.where(firstb, cur_k, lk)
    lv = jnp.where(firstb, self_v, lv)
    ah = self.att_heads
    q = self._heads(cur_k, ah)
    # A switched-off branch is computed only at initialisation (so that its
    # parameters exist) and then replaced by zeros.
    init = self.is_initializing()
    if self.use_global or init:
      g = L.global_attention(q, self._heads(gk, ah), self._heads(gv, ah),
                             gvalid)
      g = self.global_out(g.reshape(b, hw, d))
    if not self.use_global:
      g = jnp.zeros((b, hw, d), x.dtype)
    if self.use_local or init:
      rel = jnp.einsum('bqhc,hco->bqho', q.astype(jnp.float32),
                       self.rel_kernel) + self.rel_bias
      loc = L.local_attention(q, self._heads(lk, ah), self._heads(lv, ah), rel,
                              self.value_bias, size_2d, self.max_dis)
      loc = self.local_out(loc.reshape(b, hw, d))
    if not self.use_local:
      loc = jnp.zeros((b, hw, d), x.dtype)
    x = x + (drop(g) if self.drop_global else g) + drop(loc)
    # 3. feed-forward with GN, GELU, GCT and a depthwise 5x5 conv
    t = self.linear1(self.norm_ffn(x)).reshape(b, h, w, self.ffn_dim)
    t = self.ffn_gct(nn.gelu(self.ffn_gn(t), approximate=False))
    t = self.ffn_dwconv(t).reshape(b, hw, self.ffn_dim)
    x = x + drop(self.linear2(t))
    return x, (cur_k, base)


class AssociationBlock(nn.Module):
  """Hybrid Association Block: C5 + memory -> C5' (same width as C5).

  C5' = concat[X, LSTT(X), classification projection(C5)] with
  X = encoder projection(C5) (d channels) and a classification projection
  of C5 width - 2d channels (2048 = 256 + 256 + 1536 for ResNet-50).
  """
  num_ids: int
  c5_channels: int = 2048
  d_model: int = 256
  num_layers: int = 1
  self_heads: int = 4
  att_heads: int = 2
  ffn_dim: int = 1024
  gn_groups: int = 32
  max_dis: int = 7
  droppath: float = 0.1
  id_bank_kernel: int = 33
  global_slots: int = 16
  global_interval: int = 3
  use_global_memory: bool = True  # ablations, see the module docstring
  use_local_memory: bool = True
  dtype: Any = jnp.float32

  def setup(self):
    # torch's default conv initialisation (the authors set none)
    proj = lambda n: L.Conv1x1(
        n, kernel_init=inits.torch_default,
        bias_init=inits.torch_default_bias(self.c5_channels), dtype=self.dtype)
    self.encoder_projector = proj(self.d_model)
    self.cls_projector = proj(self.c5_channels - 2 * self.d_model)
    self.id_bank = IDBank(self.num_ids, self.d_model, self.id_bank_kernel,
                          dtype=self.dtype)
    self.layers = [
        LSTTLayer(self.d_model, self.self_heads, self.att_heads, self.ffn_dim,
                  self.gn_groups, self.max_dis, self.droppath,
                  drop_global=i > 0, use_global=self.use_global_memory,
                  use_local=self.use_local_memory, dtype=self.dtype)
        for i in range(self.num_layers)]
    self.final_norm = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)

  def __call__(self, c5, memory: Memory, deterministic: bool = True):
    """One association step for one frame.

    Args:
      c5: (B, h, w, C5) backbone features of the frame.
      memory: the memory before this frame (empty -> first frame: the frame
        attends to itself with the embedding of an all-zero ID mask).
    Returns:
      c5p: (B, h, w, C5) features for the FPN.
      cache: {'k', 'v'} (layers, B, h*w, d): the frame's keys and LN(x),
        what :meth:`write` needs to make its memory entry.
    """
    b, h, w, _ = c5.shape
    x2d = self.encoder_projector(c5)
    x = x2d.reshape(b, h * w, self.d_model)
    pos = jnp.asarray(L.sine_position_embedding(h, w, self.d_model // 2)
                      ).reshape(h * w, self.d_model)
    first = memory.frame == 0
    empty = self.id_bank.empty()
    slots = memory.global_valid.shape[1]
    gvalid = jnp.repeat(memory.global_valid, h * w, axis=1)
    keys, bases = [], []
    for i, layer in enumerate(self.layers):
      mem = (memory.global_k[i].reshape(b, slots * h * w, self.d_model),
             memory.global_v[i].reshape(b, slots * h * w, self.d_model),
             gvalid, memory.local_k[i], memory.local_v[i])
      x, (k, base) = layer(x, pos, mem, first, empty, (h, w), deterministic)
      keys.append(k)
      bases.append(base)
    out = self.final_norm(x).reshape(b, h, w, self.d_model)
    c5p = jnp.concatenate([x2d, out.astype(x2d.dtype),
                           self.cls_projector(c5)], axis=-1)
    cache = {'k': jnp.stack(keys), 'v': jnp.stack(bases)}
    return c5p, cache

  def write(self, memory: Memory, cache, id_mask, new_instance) -> Memory:
    """Store the frame whose ``cache`` was returned by ``__call__``.

    Args:
      id_mask: (B, H, W, N+1) one-hot ID mask of the frame at input size
        (channel d: instance with ID d, channel N: background).
      new_instance: (B,) bool, a new instance appeared in this frame.
    """
    b = id_mask.shape[0]
    emb = self.id_bank(id_mask)
    emb = emb.reshape(b, -1, self.d_model)
    keys = cache['k'].astype(memory.local_k.dtype)
    values = jnp.stack([layer.memory_value(cache['v'][i], emb)
                        for i, layer in enumerate(self.layers)]
                       ).astype(memory.local_v.dtype)
    write, slot, step = global_write_plan(memory, new_instance,
                                          self.global_interval)
    slots = memory.global_valid.shape[1]
    onehot = write[:, None] & (jnp.arange(slots)[None, :] == slot[:, None])
    sel = onehot[None, :, :, None, None]
    return Memory(
        global_k=jnp.where(sel, keys[:, :, None], memory.global_k),
        global_v=jnp.where(sel, values[:, :, None], memory.global_v),
        global_valid=memory.global_valid | onehot,
        global_time=jnp.where(onehot, memory.frame[:, None],
                              memory.global_time),
        local_k=keys,
        local_v=values,
        frame=memory.frame + 1,
        last_write=jnp.where(write, step, memory.last_write))
