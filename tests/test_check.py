"""The dataset checker: every problem of a broken dataset, and statistics."""

import os
import subprocess
import sys

import pytest

from iai_jax.data import check
from vis_fixtures import rewrite, square_rle, write_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _extra_instances(video, count, category=5, crowd=0, first_id=10):
  anns = []
  for k in range(count):
    sq, _ = square_rle(k, k, 2)
    anns.append({'id': first_id + k, 'video_id': video, 'category_id': category,
                 'iscrowd': crowd, 'segmentations': [sq, None, None]})
  return anns


def test_checker_reports_every_problem_not_only_the_first(tmp_path):
  ann, frames = write_dataset(str(tmp_path))

  def break_it(d):
    d['annotations'][0]['category_id'] = 42
    d['annotations'][0]['areas'] = [1, 2]
    d['annotations'][1]['segmentations'][1] = {'size': [5, 5], 'counts': 'PP'}
    d['annotations'][1]['occlusion'] = [None, 'hidden', None]
    d['annotations'].append({'id': 3, 'video_id': 99, 'category_id': 3,
                             'segmentations': [None] * 3})
    d['annotations'].append({'id': 4, 'video_id': 9, 'category_id': 3})
    d['annotations'] += _extra_instances(9, 3)
  rewrite(ann, break_it)
  for name in ('a/1.jpg', 'a/2.jpg'):
    os.remove(os.path.join(frames, name))
  report = check.check_dataset(ann, frames, max_instances=3)
  text = '\n'.join(report.problems)
  expected = [
      'video 7: 2 of 3 frame files missing: ' + os.path.join(frames, 'a/1.jpg'),
      'annotation 1 (video 7): unknown category_id 42 (known: [3, 5])',
      'annotation 1 (video 7): areas has 2 entries, the video has 3 frames',
      'annotation 2 (video 7) frame 1: mask size [5, 5], the video is [8, 10]',
      "annotation 2 (video 7): occlusion value 'hidden' is not one of",
      'annotation 3 (video 99): video_id 99 is not a video of the file',
      'annotation 4 (video 9): no "segmentations" list',
      'video 9: 4 instances, more than the 3 IDs the model can issue',
  ]
  for e in expected:
    assert e in text, (e, text)
  assert len(report.problems) == len(expected), text
  assert not report.ok and f'{len(expected)} problems:' in report.format()
  assert report.stats['videos'] == 2 and report.stats['frames'] == 6


def test_checker_statistics_and_instance_limit(tmp_path):
  ann, frames = write_dataset(str(tmp_path))
  # video 9: 3 instances plus 2 crowd regions; crowd does not count
  rewrite(ann, lambda d: d['annotations'].extend(
      _extra_instances(9, 3, category=3)
      + _extra_instances(9, 2, crowd=1, first_id=20)))
  report = check.check_dataset(ann, frames, max_instances=3)
  assert report.ok, report.problems
  s = report.stats
  assert (s['videos'], s['frames'], s['instances']) == (2, 6, 4)
  assert s['instances per video (min/mean/max)'] == '1/2.00/3'
  assert s['crowd regions'] == 3
  assert s['class_histogram'] == {'cat': 4, 'dog': 3}  # by name, crowd incl.
  text = report.format()
  assert 'no problems found' in text and 'cat' in text and 'dog' in text
  over = check.check_dataset(ann, frames, max_instances=2)
  assert len(over.problems) == 1
  assert over.problems[0].startswith('video 9: 3 instances, more than the 2')


def test_checker_unreadable_inputs(tmp_path):
  ann, frames = write_dataset(str(tmp_path))
  missing = check.check_dataset(str(tmp_path / 'none.json'), frames)
  assert not missing.ok and 'does not exist' in missing.problems[0]
  no_frames = check.check_dataset(ann, str(tmp_path / 'none'))
  assert no_frames.problems == [
      f'frame folder {tmp_path / "none"} does not exist (set '
      '--config.dataset.root / dataset.train_frames / dataset.val_frames)']
  with open(ann, 'w') as f:
    f.write('[1, 2')
  bad = check.check_dataset(ann, frames)
  assert len(bad.problems) == 1 and 'not valid JSON' in bad.problems[0]
  with open(ann, 'w') as f:
    f.write('[]')
  assert 'not a YouTube-VIS / OVIS annotation file' in check.check_dataset(
      ann, frames).problems[0]


@pytest.mark.parametrize('broken', [False, True])
def test_check_command_exit_code(tmp_path, broken):
  ann, frames = write_dataset(str(tmp_path))
  if broken:
    os.remove(os.path.join(frames, 'b/1.jpg'))
  proc = subprocess.run(
      [sys.executable, '-m', 'iai_jax.data.check',
       '--config=configs/ytvis19.py', f'--config.dataset.root={tmp_path}',
       '--config.dataset.train_json=ann.json',
       '--config.dataset.train_frames=frames'],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == (1 if broken else 0), proc.stderr
  assert 'instances per class:' in proc.stdout
  if broken:
    assert '1 problem:' in proc.stdout and 'b/1.jpg' in proc.stdout
  else:
    assert 'no problems found' in proc.stdout


def test_checker_decodes_every_frame_and_checks_its_size(tmp_path, capsys):
  """Issue 17: a corrupt JPEG or a frame of another size used to pass."""
  from vis_fixtures import write_frame
  ann, frames = write_dataset(str(tmp_path))
  with open(os.path.join(frames, 'a/1.jpg'), 'r+b') as f:  # cut in half
    f.truncate(os.path.getsize(os.path.join(frames, 'a/1.jpg')) // 2)
  with open(os.path.join(frames, 'a/2.jpg'), 'wb') as f:
    f.write(b'not an image')
  write_frame(os.path.join(frames, 'b/0.jpg'), 12, 10)
  # a compressed RLE whose runs cover 7 of the 80 pixels
  rewrite(ann, lambda d: d['annotations'][0]['segmentations'].__setitem__(
      0, {'size': [8, 10], 'counts': '52'}))
  report = check.check_dataset(ann, frames)
  assert len(report.problems) == 3, report.problems
  decode, size, mask = report.problems
  assert decode.startswith(
      'video 7: 2 of 3 frames do not decode as images, e.g. '
      + os.path.join(frames, 'a/1.jpg'))
  assert os.path.join(frames, 'a/2.jpg') in decode
  assert decode.endswith('extract the frames again from the source video or '
                         'replace the files')
  assert size == (
      'video 9: 1 of 3 frames are not the 10x8 (width x height) the JSON '
      f'says, e.g. {os.path.join(frames, "b/0.jpg")} is 10x12; fix the '
      'video\'s "height" / "width" or resize the frames')
  assert mask.startswith('annotation 1 (video 7) frame 0: the run lengths of '
                         '"counts" add up to 7 pixels, not height x width')
  assert 'decoding frames' in capsys.readouterr().err   # the progress bar
  # without decoding (the property tests) only the mask is found
  assert check.check_dataset(ann, frames, decode_frames=False).problems == [
      mask]
