"""Hybrid Association Block, ID bank and the memory policy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iai_jax.models.association import AssociationBlock, Memory, init_memory

B, H, W, C5 = 2, 3, 4, 48
N = 5  # ID slots


def _block(slots=8, interval=3, layers=1):
  return AssociationBlock(num_ids=N, c5_channels=C5, d_model=16, num_layers=layers,
                          self_heads=4, att_heads=2, ffn_dim=32, gn_groups=8,
                          max_dis=2, droppath=0.1, global_slots=slots,
                          global_interval=interval)


def _init(block):
  c5 = jnp.zeros((B, H, W, C5))
  mem = init_memory(block.num_layers, B, (H, W), block.d_model, block.global_slots)

  def f(m, c5, mem):
    out, cache = m(c5, mem)
    return m.write(mem, cache, jnp.zeros((B, H * 32, W * 32, N + 1)),
                   jnp.zeros((B,), bool))
  variables = block.init(jax.random.key(0), c5, mem, method=f)
  return variables, mem


def _frames(n, seed=0):
  rng = np.random.default_rng(seed)
  c5 = rng.normal(size=(n, B, H, W, C5)).astype(np.float32)
  ids = rng.integers(0, N + 1, size=(n, B, H * 32, W * 32))
  masks = np.eye(N + 1, dtype=np.float32)[ids]
  return jnp.asarray(c5), jnp.asarray(masks)


@pytest.fixture(scope='module')
def small():
  block = _block()
  variables, mem = _init(block)
  # random, non-trivial parameters everywhere (biases and value bias too)
  leaves, tree = jax.tree_util.tree_flatten(variables)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  leaves = [l + 0.1 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)]
  return block, jax.tree_util.tree_unflatten(tree, leaves), mem


def _step(block):
  @jax.jit
  def step(v, c5, mem, mask, new):
    out, cache = block.apply(v, c5, mem)
    mem = block.apply(v, mem, cache, mask, new, method=block.write)
    return out, cache, mem
  return step


def _run(block, v, mem, n, new_at=()):
  step = _step(block)
  c5s, masks = _frames(n)
  history = []
  for t in range(n):
    new = jnp.full((B,), t in new_at)
    out, cache, mem = step(v, c5s[t], mem, masks[t], new)
    history.append((out, cache))
  return mem, history


def test_write_schedule_interval_and_new_instances():
  block = _block(slots=8, interval=3)
  v, mem = _init(block)
  mem, _ = _run(block, v, mem, 12, new_at=(7,))
  written = sorted(np.asarray(mem.global_time[0])[np.asarray(mem.global_valid[0])])
  # step(t) = 0 for t = 0, else t + 1; write when step - last >= 3 or new
  assert written == [0, 2, 5, 7, 10]
  assert int(mem.frame[0]) == 12


def test_eviction_keeps_first_frame_and_drops_oldest(small):
  block = _block(slots=3, interval=1)
  v, mem = _init(block)
  v = small[1]
  mem, hist = _run(block, v, mem, 6)
  np.testing.assert_array_equal(mem.global_time, [[0, 5, 4]] * B)
  assert bool(mem.global_valid.all())
  # the slots hold exactly the keys of those frames
  for slot, t in enumerate((0, 5, 4)):
    np.testing.assert_allclose(mem.global_k[0, :, slot], hist[t][1]['k'][0],
                               atol=1e-6)
  # local memory = the last frame
  np.testing.assert_allclose(mem.local_k[0], hist[5][1]['k'][0], atol=1e-6)


def test_single_slot_keeps_only_first_frame():
  block = _block(slots=1, interval=1)
  v, mem = _init(block)
  mem, hist = _run(block, v, mem, 4, new_at=(2,))
  np.testing.assert_array_equal(mem.global_time, [[0]] * B)
  np.testing.assert_allclose(mem.global_k[0, :, 0], hist[0][1]['k'][0], atol=1e-6)


def test_empty_slots_have_no_effect(small):
  block, v, mem = small
  mem, _ = _run(block, v, mem, 3)
  valid = np.asarray(mem.global_valid)
  assert valid.sum(1).tolist() == [2, 2]  # frames 0 and 2
  garbage = Memory(**{**mem.__dict__,
                      'global_k': jnp.where(mem.global_valid[None, :, :, None, None],
                                            mem.global_k, 77.0),
                      'global_v': jnp.where(mem.global_valid[None, :, :, None, None],
                                            mem.global_v, -55.0)})
  c5, _ = _frames(1, seed=5)
  a, _ = block.apply(v, c5[0], mem)
  b, _ = block.apply(v, c5[0], garbage)
  np.testing.assert_allclose(a, b, atol=1e-5)
  # ...while a valid slot does matter
  changed = Memory(**{**mem.__dict__, 'global_v': mem.global_v + 1.0})
  c, _ = block.apply(v, c5[0], changed)
  assert not np.allclose(a, c, atol=1e-3)


def test_first_frame_attends_to_itself_with_empty_id_embedding(small):
  block, v, empty = small
  c5, _ = _frames(1, seed=3)
  out_first, cache = block.apply(v, c5[0], empty)
  # memory written from the frame itself with an all-zero ID mask
  zeros = jnp.zeros((B, H * 32, W * 32, N + 1))
  mem = block.apply(v, empty, cache, zeros, jnp.zeros((B,), bool),
                    method=block.write)
  out_again, _ = block.apply(v, c5[0], mem)
  np.testing.assert_allclose(out_first, out_again, rtol=1e-5, atol=1e-5)
  # with an actual ID mask the memory, and so the output, differs
  ones = jnp.zeros((B, H * 32, W * 32, N + 1)).at[..., 1].set(1.0)
  mem1 = block.apply(v, empty, cache, ones, jnp.zeros((B,), bool),
                     method=block.write)
  out1, _ = block.apply(v, c5[0], mem1)
  assert not np.allclose(out1, out_first, atol=1e-3)


def _id_bank_numpy(mask, kernel, bias):
  """E = Y^T D evaluated as an explicit strided 33x33 correlation."""
  k = kernel.shape[0]
  pad = k // 2
  mp = np.pad(mask, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  b, hh, ww, _ = mask.shape
  out = np.zeros((b, hh // 32, ww // 32, kernel.shape[-1]))
  for i in range(hh // 32):
    for j in range(ww // 32):
      patch = mp[:, i * 32:i * 32 + k, j * 32:j * 32 + k]
      out[:, i, j] = np.einsum('bhwc,hwco->bo', patch, kernel)
  return out + bias


def test_memory_entry_reuses_keys_and_embeds_ids(small):
  block, v, empty = small
  c5, masks = _frames(1, seed=4)
  _, cache = block.apply(v, c5[0], empty)
  mem = block.apply(v, empty, cache, masks[0], jnp.zeros((B,), bool),
                    method=block.write)
  p = jax.tree_util.tree_map(np.asarray, v['params'])
  emb = _id_bank_numpy(np.asarray(masks[0]), p['id_bank']['kernel'],
                       p['id_bank']['bias']).reshape(B, H * W, -1)
  lin = p['layers_0']['linear_v']
  want_v = (np.asarray(cache['v'][0]) + emb) @ lin['kernel'] + lin['bias']
  np.testing.assert_allclose(mem.local_v[0], want_v, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(mem.global_v[0, :, 0], want_v, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(mem.local_k, cache['k'])


@pytest.mark.parametrize('layers', [1, 2])
def test_scan_equals_explicit_calls(layers):
  block = _block(slots=4, interval=3, layers=layers)
  v, mem0 = _init(block)
  c5s, masks = _frames(5, seed=7)
  news = jnp.asarray([[False] * B, [True] * B, [False] * B, [True, False],
                      [False] * B])

  def cell(mem, xs):
    c5, mask, new = xs
    out, cache = block.apply(v, c5, mem)
    return block.apply(v, mem, cache, mask, new, method=block.write), out

  mem_scan, outs = jax.jit(lambda m: jax.lax.scan(cell, m, (c5s, masks, news)))(mem0)
  mem = mem0
  step = _step(block)
  for t in range(5):
    out, _, mem = step(v, c5s[t], mem, masks[t], news[t])
    np.testing.assert_allclose(outs[t], out, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(mem_scan), jax.tree_util.tree_leaves(mem)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # sample 0: new instance at frame 3 (written, and it resets the interval);
  # sample 1: frame 4 is the next interval write
  frames = lambda b: sorted(np.asarray(mem.global_time[b])[np.asarray(mem.global_valid[b])])
  assert frames(0) == [0, 1, 3] and frames(1) == [0, 1, 4]


def test_online_loop_compiles_once(small):
  block, v, mem = small
  traces = []

  def step(v, c5, mem, mask, new):
    traces.append(1)
    out, cache = block.apply(v, c5, mem)
    return out, block.apply(v, mem, cache, mask, new, method=block.write)

  step = jax.jit(step)
  c5s, masks = _frames(4, seed=9)
  for t in range(100):
    out, mem = step(v, c5s[t % 4], mem, masks[t % 4], jnp.full((B,), t % 17 == 0))
  assert len(traces) == 1
  assert int(mem.frame[0]) == 100
  assert np.isfinite(np.asarray(out)).all()
