"""Hand-built video records (the TFDS record layout) for tests."""

import io

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


def _jpeg(h, w, value):
  buf = io.BytesIO()
  img = np.zeros((h, w, 3), np.uint8)
  img[..., 0] = value
  img[:, : w // 2, 1] = 200  # left half green: shows flips
  Image.fromarray(img).save(buf, format='JPEG', quality=95)
  return buf.getvalue()


def _rle(mask):
  return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))['counts']


def make_record(h=32, w=64, frames=6, tracks=(), track_ids=None, video_id=7):
  """tracks: list of (label, iscrowd, {frame: (y0, y1, x0, x1)})."""
  rle = []
  for _, _, boxes in tracks:
    for f in range(frames):
      if f in boxes:
        m = np.zeros((h, w), bool)
        y0, y1, x0, x1 = boxes[f]
        m[y0:y1, x0:x1] = True
        rle.append(_rle(m))
      else:
        rle.append(b'')
  return {
      'video_id': video_id, 'height': h, 'width': w,
      'frames': [_jpeg(h, w, 10 * f) for f in range(frames)],
      'track_id': (np.arange(len(tracks)) if track_ids is None
                   else np.asarray(track_ids)),
      'label': np.asarray([t[0] for t in tracks], np.int32),
      'iscrowd': np.asarray([t[1] for t in tracks], bool),
      'rle': np.asarray(rle, object),
  }
