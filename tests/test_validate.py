"""Mask checks before pycocotools, atomic files and folders, the CLI's
filter of shutdown noise."""

import logging
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from iai_jax import atomic, cli, validate


def encode_runs(runs):
  """Run lengths -> the compressed string, written from the format's
  description (5 bits a character from '0', 0x20 = more characters follow,
  0x10 on the last one = negative, run k > 2 as the difference to k - 2);
  independent of the decoder under test."""
  out = []
  for k, run in enumerate(runs):
    x = run - runs[k - 2] if k > 2 else run
    while True:
      c = x & 0x1f
      x >>= 5
      more = x != -1 if c & 0x10 else x != 0
      out.append(chr(48 + (c | (0x20 if more else 0))))
      if not more:
        break
  return ''.join(out)


def test_encoder_agrees_with_pycocotools():
  # 4x4, column-major: 5 background, 2 object, 2 background, 2 object, 5 bg
  m = np.zeros((4, 4), np.uint8)
  m[1:3, 1:3] = 1
  rle = mask_utils.encode(np.asfortranarray(m))
  assert rle['counts'] == b'52203' == encode_runs([5, 2, 2, 2, 5]).encode()
  # and on masks with long runs and negative differences
  rng = np.random.default_rng(1)
  for _ in range(20):
    m = np.zeros((60, 70), np.uint8)
    for _ in range(3):
      y, x = rng.integers(0, 50, 2)
      m[y:y + rng.integers(1, 30), x:x + rng.integers(1, 40)] = 1
    flat = m.ravel(order='F')
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.r_[0, change, flat.size]).tolist()
    if flat[0]:
      runs = [0] + runs
    assert encode_runs(runs).encode() == mask_utils.encode(
        np.asfortranarray(m))['counts']


def test_valid_masks_pass():
  rng = np.random.default_rng(0)
  segs = []
  for _ in range(200):
    h, w = rng.integers(1, 40, 2)
    m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
    rle = mask_utils.encode(np.asfortranarray(m))
    rle['counts'] = rle['counts'].decode() if rng.random() < 0.5 else \
        rle['counts']
    segs.append(rle)
  # long runs need several characters and negative differences
  segs.append({'size': [300, 400], 'counts': encode_runs(
      [70000, 3, 49000, 997])})
  assert validate.compressed_rle_problems(segs) == [None] * len(segs)


@pytest.mark.parametrize('seg, problem', [
    # the case: a 4x4 frame whose runs cover 7 pixels
    ({'size': [4, 4], 'counts': '52'},
     'the run lengths of "counts" add up to 7 pixels, not height x width = '
     '4 x 4 = 16'),
    ({'size': [4, 4], 'counts': encode_runs([5, 2, 2, 2, 5, 9])},
     'add up to 25 pixels, not height x width = 4 x 4 = 16'),
    ({'size': [4, 4], 'counts': ''}, 'add up to 0 pixels'),
    # runs 5, 2, 12, -3: covers 16 pixels, but a negative run
    ({'size': [4, 4], 'counts': encode_runs([5, 2, 12, -3])},
     'a run length is negative or above 2**32'),
    ({'size': [4, 4], 'counts': '5P'},   # 'P' = 48 + 0x20: more follows
     '"counts" ends in the middle of a number'),
    ({'size': [4, 4], 'counts': '5\x00203'},
     '"counts" holds characters outside the RLE alphabet'),
    ({'size': [4, 4], 'counts': '5é203'},
     '"counts" holds characters outside the RLE alphabet'),
    ({'size': [4, 4], 'counts': 'o' * 9 + '0'},
     '"counts" holds a number longer than 7 characters'),
    ({'size': ['4', '4'], 'counts': '52203'},
     '"size" is [\'4\', \'4\'], expected [height, width] as two positive '
     'integers'),
    ({'size': [0, 0], 'counts': ''}, '"size" is [0, 0]'),
    ({'size': [4, True], 'counts': '52203'}, '"size" is [4, True]'),
    ({'size': [4], 'counts': '52203'}, '"size" is [4]'),
    ({'size': [4, 4], 'counts': 52203}, '"counts" is a int'),
    ({'size': [4, 4]}, 'not an RLE'),
])
def test_broken_compressed_masks_are_named(seg, problem):
  got = validate.compressed_rle_problem(seg)
  assert got is not None and problem in got, got
  # the same answer among valid ones, in one batch
  good = {'size': [4, 4], 'counts': '52203'}
  batch = validate.compressed_rle_problems([good, seg, good])
  assert batch[0] is None and batch[2] is None and batch[1] == got


def test_uncompressed_and_polygon_checks():
  ok = {'size': [2, 3], 'counts': [1, 4, 1]}
  assert validate.uncompressed_rle_problem(ok) is None
  assert 'add up to 5 pixels, not height x width = 2 x 3 = 6' in \
      validate.uncompressed_rle_problem({'size': [2, 3], 'counts': [1, 4]})
  assert 'non-negative integer run lengths' in \
      validate.uncompressed_rle_problem({'size': [2, 3], 'counts': [7, -1]})
  assert validate.polygon_problem([[0, 0, 4, 0, 4, 3]], 8, 10) is None
  assert 'at least three points' in validate.polygon_problem([[0, 0, 4, 0]],
                                                            8, 10)
  assert 'at least three points' in validate.polygon_problem(
      [[0, 0, 4, 0, 'x', 3]], 8, 10)
  assert 'far outside the 8x10 frame' in validate.polygon_problem(
      [[0, 0, 4e9, 0, 4, 3]], 8, 10)
  assert 'non-empty list' in validate.polygon_problem([], 8, 10)
  assert 'give the mask as an RLE' in validate.polygon_problem(
      [[0, 0, 4, 0, 4, 3]], 8, 2 ** 40)


def test_atomic_file_replaces_or_keeps_the_old_one(tmp_path, monkeypatch):
  path = tmp_path / 'r.json'
  atomic.write_json(str(path), {'a': 1})
  assert path.read_text() == '{"a": 1}'

  def broken_fsync(fd):
    raise OSError('disk full')
  monkeypatch.setattr(os, 'fsync', broken_fsync)
  with pytest.raises(OSError, match='disk full'):
    atomic.write_json(str(path), {'a': 2})
  assert path.read_text() == '{"a": 1}'
  assert os.listdir(tmp_path) == ['r.json']  # no temporary file left


def test_staged_dir_swaps_the_whole_folder_or_nothing(tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'old.txt').write_text('old')
  with pytest.raises(KeyboardInterrupt):
    with atomic.staged_dir(str(out)) as stage:
      open(os.path.join(stage, 'new.txt'), 'w').write('new')
      raise KeyboardInterrupt  # a kill in the middle
  assert sorted(os.listdir(tmp_path)) == ['out']
  assert os.listdir(out) == ['old.txt']
  with atomic.staged_dir(str(out)) as stage:
    open(os.path.join(stage, 'new.txt'), 'w').write('new')
    assert os.listdir(out) == ['old.txt']  # untouched until the end
  assert os.listdir(out) == ['new.txt']     # replaced as a whole
  assert sorted(os.listdir(tmp_path)) == ['out']
  with atomic.staged_dir(str(tmp_path / 'fresh')) as stage:
    open(os.path.join(stage, 'x'), 'w').write('x')
  assert os.listdir(tmp_path / 'fresh') == ['x']


def test_replace_dir_without_an_exchange_call(tmp_path, monkeypatch):
  monkeypatch.setattr(atomic, '_exchange', lambda a, b: False)
  old, new = tmp_path / 'o', tmp_path / 'n'
  old.mkdir()
  new.mkdir()
  (old / 'a').write_text('a')
  (new / 'b').write_text('b')
  atomic.replace_dir(str(new), str(old))
  assert os.listdir(old) == ['b'] and sorted(os.listdir(tmp_path)) == ['o']


def test_event_loop_noise_is_filtered_and_other_errors_are_not():
  f = cli.EventLoopNoiseFilter()

  def record(msg, exc=None):
    return logging.LogRecord('asyncio', logging.ERROR, __file__, 1, msg, (),
                             (type(exc), exc, None) if exc else None)
  assert not f.filter(record('Task exception was never retrieved',
                             RuntimeError('Event loop is closed')))
  assert not f.filter(record('Event loop is closed'))
  assert f.filter(record('Task exception was never retrieved',
                         RuntimeError('disk full')))
  assert f.filter(record('something else'))
