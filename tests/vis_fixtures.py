"""Small hand-built YouTube-VIS-format datasets on disk, for tests."""

import json
import os

import numpy as np
from pycocotools import mask as mask_utils

H, W = 8, 10


def square_rle(y0, x0, s, h=H, w=W):
  """(compressed RLE with a str counts, bool mask) of an s x s square."""
  m = np.zeros((h, w), np.uint8)
  m[y0:y0 + s, x0:x0 + s] = 1
  rle = mask_utils.encode(np.asfortranarray(m))
  return {'size': [h, w], 'counts': rle['counts'].decode()}, m.astype(bool)


def uncompressed_rle(mask):
  """Column-major run lengths starting with zeros, as in the released files."""
  flat = np.asarray(mask, bool).ravel(order='F').astype(np.int64)
  runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, flat, -1]))).tolist()
  if flat[0] == 1:
    runs = [0] + runs
  return {'size': list(np.shape(mask)), 'counts': runs}


POLY = [[5.0, 1.0, 9.0, 1.0, 9.0, 5.0, 5.0, 5.0]]


def dataset_dict():
  """Two 3-frame 8x10 videos (ids 7, 9), categories 5 'dog' and 3 'cat'.

  Annotation 1 (video 7, cat): compressed RLE square, null, polygon.
  Annotation 2 (video 7, dog): a crowd region, uncompressed RLE in frame 1.
  """
  sq, _ = square_rle(1, 1, 3)
  poly_mask = mask_utils.decode(mask_utils.frPyObjects(POLY, H, W)[0])
  return {
      'info': {'description': 'test'},
      'videos': [
          {'id': 7, 'height': H, 'width': W, 'length': 3,
           'file_names': [f'a/{t}.jpg' for t in range(3)]},
          {'id': 9, 'height': H, 'width': W, 'length': 3,
           'file_names': [f'b/{t}.jpg' for t in range(3)]}],
      'annotations': [
          {'id': 1, 'video_id': 7, 'category_id': 3, 'iscrowd': 0,
           'segmentations': [sq, None, POLY], 'areas': [9, None, 16],
           'bboxes': [[1, 1, 3, 3], None, [5, 1, 4, 4]]},
          {'id': 2, 'video_id': 7, 'category_id': 5, 'iscrowd': 1,
           'segmentations': [None, uncompressed_rle(poly_mask), None],
           'areas': [None, 16, None], 'bboxes': [None, [5, 1, 4, 4], None]}],
      'categories': [{'id': 5, 'name': 'dog'}, {'id': 3, 'name': 'cat'}],
  }


def write_frame(path, h, w, value=0):
  """A grey h x w JPEG at ``path`` (folders made)."""
  from PIL import Image
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def write_dataset(root, data=None, frames=True):
  """Writes ``root/ann.json`` and a JPEG of the video's size for every frame
  under ``root/frames``.

  Returns (annotation path, frames root).
  """
  data = dataset_dict() if data is None else data
  os.makedirs(root, exist_ok=True)
  ann = os.path.join(root, 'ann.json')
  with open(ann, 'w') as f:
    json.dump(data, f)
  frames_root = os.path.join(root, 'frames')
  if frames:
    for v in data['videos']:
      for n in v['file_names']:
        write_frame(os.path.join(frames_root, n), v['height'], v['width'])
  return ann, frames_root


def rewrite(ann, change):
  """Loads the JSON at ``ann``, applies ``change(data)``, writes it back."""
  with open(ann) as f:
    data = json.load(f)
  change(data)
  with open(ann, 'w') as f:
    json.dump(data, f)
