"""Running a model: own videos (MP4 and frame folders), splits, bad input."""

import json
import os
import zipfile

import imageio.v2 as imageio
import jax
import numpy as np
import pytest
from PIL import Image

from iai_jax import checkpoints, config_lib, eval_split, inference, predict
from iai_jax.data import synthetic, tfds_builder
from iai_jax.models import build_model, init_variables


@pytest.fixture(scope='module')
def tiny():
  cfg = config_lib.make_config('synthetic', 'tiny')
  with cfg.unlocked():  # random weights: let candidates through
    cfg.infer.score_thr = 0.0
    cfg.infer.id_thr = 0.0
    cfg.infer.video_score_thr = 0.0
  variables = init_variables(build_model(cfg.model), jax.random.key(0))
  return cfg, jax.device_get(variables)


def _frames(n, h=72, w=120):
  rng = np.random.default_rng(0)
  return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_predict_on_mp4_and_frame_folder(tiny, tmp_path):
  cfg, variables = tiny
  video = str(tmp_path / 'in.mp4')
  imageio.mimwrite(video, _frames(6), fps=12, macro_block_size=1)
  out = predict.predict_video(cfg, variables, video, str(tmp_path / 'o1'),
                              gif=True, png=True, log=lambda *_: None)
  reader = imageio.get_reader(out['video'])
  assert reader.get_meta_data()['fps'] == pytest.approx(12, rel=0.01)
  assert sum(1 for _ in reader) == 6
  assert os.path.exists(out['gif'])
  masks = sorted(os.listdir(tmp_path / 'o1' / 'masks'))
  assert len(masks) == 6
  png = Image.open(tmp_path / 'o1' / 'masks' / masks[0])
  assert png.mode == 'P' and png.size == (120, 72)
  results = json.load(open(out['results']))
  for r in results:
    assert len(r['segmentations']) == 6 and r['video_id'] == 1
    assert 1 <= r['category_id'] <= cfg.model.num_classes
  folder = tmp_path / 'frames'
  folder.mkdir()
  for i, f in enumerate(_frames(3)):
    Image.fromarray(f).save(folder / f'{i:03d}.png')
  out = predict.predict_video(cfg, variables, str(folder), str(tmp_path / 'o2'),
                              log=lambda *_: None)
  assert sum(1 for _ in imageio.get_reader(out['video'])) == 3


def test_predict_bad_inputs_say_what_is_wrong(tiny, tmp_path):
  cfg, variables = tiny
  with pytest.raises(predict.PredictError, match='does not exist'):
    predict.read_frames(str(tmp_path / 'nope.mp4'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(predict.PredictError, match='no image files'):
    predict.read_frames(str(tmp_path / 'empty'))
  bad = tmp_path / 'bad.mp4'
  bad.write_bytes(b'this is not a video')
  with pytest.raises(predict.PredictError, match='cannot read video'):
    predict.read_frames(str(bad))
  with pytest.raises(checkpoints.CheckpointError, match='does not exist'):
    checkpoints.restore_variables(cfg, str(tmp_path / 'no_ckpt'))


def test_checkpoint_that_does_not_fit_the_config(tiny, tmp_path):
  cfg, variables = tiny
  checkpoints.save_variables(str(tmp_path / 'w'), variables, {'source': 'test'})
  other = config_lib.make_config('synthetic', 'tiny')
  with other.unlocked():
    other.model.num_classes = 7
  with pytest.raises(Exception, match='does not fit'):
    checkpoints.restore_variables(other, str(tmp_path / 'w'))


def test_evaluate_split_writes_results_zip_and_scores(tiny, tmp_path):
  cfg, variables = tiny
  with cfg.unlocked():
    cfg.dataset.root = str(tmp_path)
    cfg.dataset.train_json = 'annotations.json'
    cfg.dataset.train_frames = 'JPEGImages'
    cfg.dataset.heldout_fraction = 0.34
  synthetic.generate(str(tmp_path), 3, 4, 96, 160, 2, 0.3, seed=0)
  tfds_builder.build(cfg, log=lambda *_: None)
  logs = []
  stats = eval_split.evaluate_split(cfg, variables, str(tmp_path / 'w'),
                                    log=logs.append, overlay=True)
  assert set(stats) >= {'AP', 'AP50', 'AR1', 'AR10'}
  assert all(-1 <= stats[k] <= 1 for k in ('AP', 'AP50', 'AR1', 'AR10',
                                             'HOTA', 'AssA', 'IDF1'))
  assert stats['IDSW'] >= 0 and set(stats['id_kept_by_gap']) >= {'0'}
  out = tmp_path / 'w' / 'eval_heldout'
  with zipfile.ZipFile(out / 'results.zip') as z:
    assert z.namelist() == ['results.json']
  assert json.load(open(out / 'eval_metrics.json')) == stats
  assert any('Average Precision' in l for l in logs)
  gifs = [f for f in os.listdir(out) if f.endswith('.gif')]
  assert len(gifs) == 1 and Image.open(out / gifs[0]).n_frames == 4


# ------------------------------------------------------------ issue 17
def test_predict_streams_frame_by_frame(tiny, tmp_path, monkeypatch):
  """Each frame is decoded, run, drawn and written before the next is read:
  nothing holds the video's frames or overlays."""
  cfg, variables = tiny
  events = []

  def frames():
    for i, f in enumerate(_frames(4)):
      events.append(('read', i))
      yield f

  monkeypatch.setattr(predict, 'open_frames',
                      lambda path, fps: (frames(), 10.0, 4))
  real_draw = predict.overlay.draw_overlay
  monkeypatch.setattr(predict.overlay, 'draw_overlay', lambda *a: (
      events.append(('draw', len(events))), real_draw(*a))[1])
  (tmp_path / 'in.mp4').write_bytes(b'')  # open_frames is replaced
  predict.predict_video(cfg, variables, str(tmp_path / 'in.mp4'),
                        str(tmp_path / 'o'), gif=True, log=lambda *_: None)
  assert [e[0] for e in events] == ['read', 'draw'] * 4
  assert Image.open(tmp_path / 'o' / 'overlay.gif').n_frames == 4


def test_predict_output_folder_is_refused_or_replaced_whole(tiny, tmp_path,
                                                             monkeypatch):
  cfg, variables = tiny
  folder = tmp_path / 'frames'
  folder.mkdir()
  for i, f in enumerate(_frames(3)):
    Image.fromarray(f).save(folder / f'{i:03d}.png')
  out = tmp_path / 'o'
  quiet = {'log': lambda *_: None}
  predict.predict_video(cfg, variables, str(folder), str(out), png=True,
                        gif=True, **quiet)
  first = sorted(os.listdir(out))
  assert first == ['masks', 'overlay.gif', 'overlay.mp4', 'results.json']
  # a second prediction into the same folder: refused, nothing touched
  before = {n: os.path.getmtime(out / n) for n in first}
  with pytest.raises(predict.PredictError,
                     match=r'output folder .*o is not empty .*--overwrite'):
    predict.predict_video(cfg, variables, str(folder), str(out), **quiet)
  assert {n: os.path.getmtime(out / n) for n in first} == before
  # a run that dies half-way leaves the previous outputs as they were
  real_step = inference.OnlineSegmenter.step
  calls = []

  def dies(self, frame):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real_step(self, frame)

  monkeypatch.setattr(inference.OnlineSegmenter, 'step', dies)
  with pytest.raises(KeyboardInterrupt):
    predict.predict_video(cfg, variables, str(folder), str(out),
                          overwrite=True, **quiet)
  monkeypatch.undo()
  assert sorted(os.listdir(out)) == first
  assert sorted(os.listdir(tmp_path)) == ['frames', 'o']  # no staging left
  # with --overwrite the old outputs are replaced as a whole: no old masks
  # or GIF beside the new results
  predict.predict_video(cfg, variables, str(folder), str(out),
                        overwrite=True, **quiet)
  assert sorted(os.listdir(out)) == ['overlay.mp4', 'results.json']
  # --overwrite never deletes what a prediction did not write
  (out / 'notes.txt').write_text('mine')
  with pytest.raises(predict.PredictError, match=r'holds files that a '
                     r'prediction does not write \(notes.txt\)'):
    predict.check_paths(str(folder), str(out), overwrite=True)
  with pytest.raises(predict.PredictError, match='folder of its own'):
    predict.check_paths(str(folder), os.getcwd(), overwrite=True)


def test_predict_unwritable_output_fails_before_any_frame(tiny, tmp_path,
                                                          monkeypatch):
  cfg, variables = tiny
  video = str(tmp_path / 'in.mp4')
  imageio.mimwrite(video, _frames(2), fps=12, macro_block_size=1)
  monkeypatch.setattr(predict, 'open_frames', lambda *a: pytest.fail(
      'frames were read'))
  (tmp_path / 'file').write_text('x')
  with pytest.raises(predict.PredictError, match='is a file; pass a folder'):
    predict.predict_video(cfg, variables, video, str(tmp_path / 'file'))
  with pytest.raises(predict.PredictError, match='not a writable folder'):
    predict.predict_video(cfg, variables, video, str(tmp_path / 'file' / 'o'))
  locked = tmp_path / 'locked'
  locked.mkdir()
  locked.chmod(0o500)
  try:
    if not os.access(locked, os.W_OK):  # root writes anywhere
      with pytest.raises(predict.PredictError, match='not a writable folder'):
        predict.predict_video(cfg, variables, video, str(locked / 'o'))
  finally:
    locked.chmod(0o700)


def test_predict_bad_frame_names_the_file(tiny, tmp_path):
  cfg, variables = tiny
  folder = tmp_path / 'frames'
  folder.mkdir()
  for i, f in enumerate(_frames(2)):
    Image.fromarray(f).save(folder / f'{i:03d}.png')
  (folder / '002.png').write_bytes(b'\x89PNG broken')
  with pytest.raises(predict.PredictError,
                     match=r'cannot read frame .*002.png.*replace or remove'):
    predict.predict_video(cfg, variables, str(folder), str(tmp_path / 'o'),
                          log=lambda *_: None)
  assert not (tmp_path / 'o').exists()   # nothing half-written
