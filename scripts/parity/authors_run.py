#!/usr/bin/env python
"""Run the authors' IAI (zfonemore/IAI @2691be92) on CPU for parity checks.

Run with the harness venv, e.g. /work/iai_venv/bin/python.  Imports the CPU
shims and the model builder / recorder from the authors-reference harness
(iai_shims.py, iai_peer.py); the authors' code is imported from IAI_SRC
(default /work/iai_src) through iai_shims.install().  Nothing is copied.

Modes
  --make-video OUT.npz --size HxW [--frames T] [--video-seed S]
        write iai_peer.synthetic_video(T, H, W, S) as `frames` (T,H,W,3) uint8 RGB.

  --infer OUT.npz --video IN.npz --weights W.pth [--dense-frames 0,1]
        Every frame goes through the authors' own test pipeline
        (cfg.data.test.pipeline: MultiScaleFlipAug(640x360, flip=False) ->
        Resize(keep_ratio, mmcv.imrescale, cv2 bilinear) -> RandomFlip(no-op) ->
        Normalize(to_rgb=True) -> Pad(32, value 0) -> ImageToTensor -> Collect).
        The loader is replaced by their LoadImageFromWebcam fed the BGR array
        (= what LoadImageFromFile/mmcv.imfrombytes returns for a lossless file of
        that RGB image); --loader png|jpeg instead writes files and runs their
        unmodified LoadImageFromFile.  The T per-frame dicts are batched with the
        authors' collate (mmdet/datasets/collate.py, as their DataLoader does
        with samples_per_gpu=1) and passed through mmcv MMDataParallel (CPU) as
        model(return_loss=False, rescale=True, **data), exactly like
        mmdet/apis/test.py:single_gpu_test -> forward_test -> simple_test.

  --train-losses OUT.json --weights W.pth [--clip IN.npz] [--clip-out C.npz]
        forward_train on 1 clip x 5 frames (default: iai_peer synthetic clip
        at 180x320, no resize, like iai_peer --train-step), seed 0, once with
        drop path OFF (every lstt_block.basic.DropPath.drop_prob set to 0.0 at
        runtime) and once with the default drop path (0.1), both from the same
        weights.  Writes every loss term (clip-averaged and per time step) to
        OUT.json and the exact forward_train input to C.npz (re-usable as --clip).
"""
import argparse
import copy
import json
import os
import sys
import tempfile
import time

import numpy as np

HARNESS = os.environ.get('IAI_HARNESS', '/work/shared/tools/authors-reference')
if HARNESS not in sys.path:
    sys.path.insert(0, HARNESS)
import iai_shims  # noqa: E402
import iai_peer  # noqa: E402

import torch  # noqa: E402

DEFAULT_SRC = os.environ.get('IAI_SRC', '/work/iai_src')


# ---------------------------------------------------------------- helpers
def jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


def load_weights_strict(model, path):
    """Strict load of a state_dict (as written by iai_peer --save-weights).
    An mmcv checkpoint dict {'state_dict': ..., 'meta': ...} is unwrapped."""
    try:
        sd = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # mmcv checkpoints carry non-tensor meta
        raise SystemExit(f'{path}: cannot load with weights_only=True ({e}); '
                         'convert it to a plain state_dict first')
    if 'state_dict' in sd and not isinstance(sd['state_dict'], torch.Tensor):
        sd = sd['state_dict']
    model.load_state_dict(sd, strict=True)
    return len(sd)


def install_py311_shim():
    """mmdet/datasets/ytvos.py:10 does `from collections import Sequence`,
    removed in Python 3.10.  Alias the collections.abc names at runtime
    (needed only to import mmdet.datasets: pipelines, collate)."""
    import collections
    import collections.abc
    for name in ('Sequence', 'Mapping', 'MutableMapping', 'Iterable', 'Callable'):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))


def build(args, batch_size=None):
    model, cfg = iai_peer.build_model(args.src, args.config, seed=args.seed,
                                      batch_size=batch_size)
    n = load_weights_strict(model, args.weights)
    print(f'[weights] {args.weights}: {n} entries loaded (strict)', flush=True)
    return model, cfg


# ------------------------------------------------------------------ infer
def build_test_pipeline(cfg, loader):
    from mmdet.datasets.pipelines import Compose
    pipe = copy.deepcopy(cfg.data.test.pipeline)
    assert pipe[0]['type'] == 'LoadImageFromFile', pipe[0]
    if loader == 'array':
        pipe[0] = dict(type='LoadImageFromWebcam')
    return Compose(pipe), pipe


def frames_to_video_data(frames, pipeline, loader, tmpdir):
    """Per-frame results dicts exactly as YTVOSDataset.prepare_test_img builds
    them (ytvos.py:259-275 + custom.py:142-149), then the pipeline."""
    import cv2
    T, H, W, _ = frames.shape
    video = []
    for t in range(T):
        bgr = np.ascontiguousarray(frames[t][..., ::-1])
        fname = None
        if loader in ('png', 'jpeg'):
            fname = f'{t:05d}.' + ('png' if loader == 'png' else 'jpg')
            params = [cv2.IMWRITE_JPEG_QUALITY, 95] if loader == 'jpeg' else []
            assert cv2.imwrite(os.path.join(tmpdir, fname), bgr, params)
        results = dict(img_info=dict(filename=fname, height=H, width=W),
                       vid=1, img_prefix=tmpdir if loader != 'array' else None,
                       seg_prefix=None, proposal_file=None,
                       bbox_fields=[], mask_fields=[], seg_fields=[])
        if loader == 'array':
            results['img'] = bgr
        video.append(pipeline(results))
    return video


def run_infer(args):
    from pycocotools import mask as mask_util
    from mmcv.parallel import MMDataParallel
    from mmdet.datasets.collate import collate

    vid = np.load(args.video)
    frames = vid['frames']
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3, frames.shape
    T, H, W, _ = frames.shape
    model, cfg = build(args)
    model.eval()
    pipeline, pipe_cfg = build_test_pipeline(cfg, args.loader)
    with tempfile.TemporaryDirectory() as tmpdir:
        video = frames_to_video_data(frames, pipeline, args.loader, tmpdir)

    # what the authors' DataLoader (samples_per_gpu=1) hands to the test loop
    data = collate([video], samples_per_gpu=1)
    path_note = 'collate -> MMDataParallel(cpu) -> forward_test -> simple_test'
    if not isinstance(data, dict):
        # authors' collate only merges a video with > 4 frames (collate.py:75);
        # for T <= 4 it returns a list and their single_gpu_test would fail on
        # model(**data).  Fall back to the equivalent direct call.
        path_note = (f'T={T} <= 4: authors collate returns a list (their test loop '
                     'would raise); fallback: simple_test on stacked frames')
        data = None

    captured = {}
    orig_simple_test = model.simple_test

    def simple_test_spy(img, img_metas, *a, **k):
        captured['img'] = img.detach().clone()
        captured['metas'] = [dict(m) for m in img_metas]
        captured['kwargs'] = dict(k)
        return orig_simple_test(img, img_metas, *a, **k)
    model.simple_test = simple_test_spy

    dense = [int(x) for x in args.dense_frames.split(',') if x != '']
    rec = iai_peer.Recorder(model, dense_frames=dense)
    t0 = time.perf_counter()
    with torch.no_grad():
        if data is not None:
            out = MMDataParallel(model)(return_loss=False, rescale=True, **data)
        else:
            img = torch.stack([v['img'][0] for v in video], 0)
            metas = [v['img_metas'][0].data for v in video]
            for m in metas:
                m['batch_input_shape'] = tuple(img.shape[-2:])
            out = model.simple_test(img, metas, rescale=True)
    dt = time.perf_counter() - t0
    rec.remove()
    del model.simple_test
    scores, labels, masks = out

    d = dict(rec.d)
    d['input_frames_u8'] = frames
    d['input_tensor'] = captured['img'].numpy()
    for f, pf in enumerate(rec.per_frame):
        for k, v in pf.items():
            d[f'post_{k}_f{f}'] = np.asarray(v)
    d['result_scores'] = iai_peer.np32(scores)
    d['result_labels'] = labels.cpu().numpy().astype(np.int64)
    K = len(masks)
    dec = np.zeros((K, T, H, W), dtype=np.uint8)
    present = np.zeros((K, T), dtype=bool)
    rles = []
    for kk, per_obj in enumerate(masks):
        row = []
        for t, rle in enumerate(per_obj):
            row.append(rle)
            if rle is not None:
                present[kk, t] = True
                assert tuple(rle['size']) == (H, W), rle['size']
                dec[kk, t] = mask_util.decode(
                    {'size': rle['size'], 'counts': rle['counts'].encode()})
        rles.append(row)
    d['result_masks'] = dec
    d['result_mask_present'] = present
    d['result_rle_json'] = np.array(json.dumps(rles))
    d['metas_json'] = np.array(json.dumps(jsonable(captured['metas'])))

    # how far the no-resize harness preprocessing is from the real pipeline
    cmp = None
    x = captured['img'].numpy()
    m0 = captured['metas'][0]
    if tuple(m0['img_shape'][:2]) == (H, W):
        ref, _ = iai_peer.preprocess(frames)
        ref = ref.numpy()
        if ref.shape == x.shape:
            cmp = float(np.abs(ref - x).max())

    n_det = [int(pf.get('det_bboxes', np.zeros((0, 5))).shape[0]) for pf in rec.per_frame]
    n_ids = [int((np.abs(pf['cls_scores_withid'][0]).sum(-1) > 0).sum()) for pf in rec.per_frame]
    max_ids = [pf.get('max_inst_id') for pf in rec.per_frame]
    new_inst = [pf.get('new_inst_exist') for pf in rec.per_frame]
    info = dict(video=os.path.abspath(args.video), weights=os.path.abspath(args.weights),
                seed=args.seed, frames=T, height=H, width=W, loader=args.loader,
                test_pipeline=jsonable(pipe_cfg), call_path=path_note,
                simple_test_kwargs=jsonable(captured['kwargs']),
                input_tensor_shape=list(x.shape), seconds=dt,
                threads=torch.get_num_threads(), torch=torch.__version__,
                n_det_after_nms=n_det, n_ids_written=n_ids, max_inst_id=max_ids,
                new_inst_exist=new_inst, n_results=K,
                result_scores=[float(s) for s in iai_peer.np32(scores)],
                result_labels=labels.tolist(),
                result_frames_present=present.sum(1).tolist(),
                result_nonempty_frames=(dec.reshape(K, T, -1).max(-1) > 0).sum(1).tolist() if K else [],
                harness_preprocess_maxabs=cmp, shims=iai_shims.SHIM_NOTES)
    d['info_json'] = np.array(json.dumps(info))
    os.makedirs(os.path.dirname(os.path.abspath(args.infer)), exist_ok=True)
    np.savez_compressed(args.infer, **d)
    print(f'[infer] {T} frames {H}x{W} -> input {tuple(x.shape)} '
          f'(img_shape {tuple(m0["img_shape"])}, pad_shape {tuple(m0["pad_shape"])}, '
          f'scale_factor {np.round(m0["scale_factor"], 6).tolist()}): {dt:.2f}s')
    print(f'[infer] path: {path_note}')
    print(f'[infer] detections/frame after NMS: {n_det}; ids written/frame: {n_ids}; '
          f'max_inst_id/frame: {max_ids}; new_inst/frame: {[int(b) for b in new_inst]}')
    print(f'[infer] video results: {K} (scores {[round(s, 4) for s in info["result_scores"]]}, '
          f'labels {labels.tolist()}, frames with mask {present.sum(1).tolist()})')
    if cmp is not None:
        print(f'[infer] max |pipeline tensor - iai_peer.preprocess| = {cmp:.3g}')
    print(f'[infer] wrote {args.infer} ({len(d)} arrays)')


# ------------------------------------------------------------------ train
def synthetic_clip(args):
    H, W = iai_peer.parse_hw(args.train_size)
    frames = iai_peer.synthetic_video(5, H, W, seed=args.video_seed)
    img, metas = iai_peer.preprocess(frames)
    Hp, Wp = img.shape[2:]
    gt = iai_peer.synthetic_clip_gt(5, H, W, Hp, Wp, seed=args.seed)
    return frames, img, metas, gt


def load_clip(path):
    from mmdet.core import BitmapMasks
    z = np.load(path)
    img = torch.from_numpy(z['img'].astype(np.float32))
    T, _, Hp, Wp = img.shape
    if 'metas_json' in z:
        metas = json.loads(str(z['metas_json']))
        for m in metas:
            for k in ('ori_shape', 'img_shape', 'pad_shape', 'batch_input_shape'):
                if k in m:
                    m[k] = tuple(m[k])
            m['scale_factor'] = np.array(m['scale_factor'], dtype=np.float32)
    else:
        metas = [dict(ori_shape=(Hp, Wp, 3), img_shape=(Hp, Wp, 3), pad_shape=(Hp, Wp, 3),
                      scale_factor=np.ones(4, np.float32), flip=False,
                      batch_input_shape=(Hp, Wp)) for _ in range(T)]
    bboxes, labels, masks, ids = [], [], [], []
    for t in range(T):
        bboxes.append(torch.from_numpy(z[f'gt_bboxes_f{t}'].astype(np.float32)).reshape(-1, 4))
        labels.append(torch.from_numpy(z[f'gt_labels_f{t}'].astype(np.int64)))
        m = z[f'gt_masks_f{t}'].astype(np.uint8)
        masks.append(BitmapMasks(m, m.shape[1], m.shape[2]))
        ids.append(torch.from_numpy(z[f'gt_ids_f{t}'].astype(np.int64)))
    frames = z['input_frames_u8'] if 'input_frames_u8' in z else None
    return frames, img, metas, (bboxes, labels, masks, ids)


def save_clip(path, frames, img, metas, gt, max_obj_num, batch_size):
    from mmdet.models.detectors.utils import process_id, get_new_masks
    bboxes, labels, masks, ids = gt
    T = img.shape[0]
    d = dict(img=img.numpy().astype(np.float32),
             metas_json=np.array(json.dumps(jsonable(metas))),
             num_frames=np.array(T), batch_size=np.array(batch_size),
             max_obj_num=np.array(max_obj_num))
    if frames is not None:
        d['input_frames_u8'] = frames
    # derived targets, computed with the authors' own helpers on a copy
    ids_rw = copy.deepcopy(ids)
    ori = process_id(ids_rw, batch_size, max_obj_num - 1)
    _, one_hot, _ = get_new_masks(masks, ori, torch.device('cpu'), max_obj_num - 1)
    for t in range(T):
        d[f'gt_bboxes_f{t}'] = bboxes[t].numpy().astype(np.float32)
        d[f'gt_labels_f{t}'] = labels[t].numpy().astype(np.int64)
        d[f'gt_masks_f{t}'] = masks[t].to_ndarray().astype(np.uint8)
        d[f'gt_ids_f{t}'] = ids[t].numpy().astype(np.int64)
        d[f'gt_ids_head_target_f{t}'] = ids_rw[t].numpy().astype(np.int64)
        d[f'gt_idmask_argmax_f{t}'] = one_hot[t].argmax(0).numpy().astype(np.uint8)
        d[f'gt_idmask_onehot_sum_f{t}'] = one_hot[t].sum(0).numpy().astype(np.uint8)
    np.savez_compressed(path, **d)
    return sorted(d)


def run_train(args):
    from mmdet.models.lstt_block.basic import DropPath
    model, cfg = build(args, batch_size=1)
    T = model.num_frames
    assert T == 5
    sd0 = copy.deepcopy(model.state_dict())
    if args.clip:
        frames, img, metas, gt = load_clip(args.clip)
        src_desc = os.path.abspath(args.clip)
    else:
        frames, img, metas, gt = synthetic_clip(args)
        src_desc = f'iai_peer synthetic_video/synthetic_clip_gt {args.train_size}, video_seed {args.video_seed}'
    assert img.shape[0] == T, img.shape
    clip_out = args.clip_out or os.path.splitext(args.train_losses)[0] + '_clip.npz'
    keys = save_clip(clip_out, frames, img, metas, gt, model.max_obj_num, 1)
    print(f'[train] wrote clip input {clip_out} ({len(keys)} arrays)', flush=True)

    droppaths = [(n, m) for n, m in model.named_modules() if isinstance(m, DropPath)]
    default_rates = {n: m.drop_prob for n, m in droppaths}
    head = model.bbox_head
    orig_loss = head.loss
    per_frame = []

    def loss_spy(*a, **k):
        out = orig_loss(*a, **k)
        per_frame.append({n: float(v) for n, v in out.items()})
        return out

    results = {}
    for tag, off in (('droppath_off', True), ('droppath_default', False)):
        model.load_state_dict(sd0, strict=True)
        model.train()
        for n, m in droppaths:
            m.drop_prob = 0.0 if off else default_rates[n]
        per_frame.clear()
        head.loss = loss_spy
        iai_peer.seed_all(args.seed)
        bboxes, labels, masks, ids = copy.deepcopy(gt)  # process_id edits ids in place
        t0 = time.perf_counter()
        with torch.no_grad():
            losses = model.forward_train(img, [dict(m) for m in metas], bboxes, labels,
                                         gt_bboxes_ignore=None, gt_masks=masks, gt_ids=ids)
        dt = time.perf_counter() - t0
        del head.loss
        lv = {k: float(v) for k, v in losses.items()}
        results[tag] = dict(losses=lv, total=sum(lv.values()),
                            per_frame=copy.deepcopy(per_frame), forward_s=dt,
                            drop_prob={n: m.drop_prob for n, m in droppaths})
        print(f'[train] {tag}: ' + ', '.join(f'{k} {v:.6f}' for k, v in lv.items())
              + f' (forward {dt:.2f}s)', flush=True)
    model.load_state_dict(sd0, strict=True)

    out = dict(weights=os.path.abspath(args.weights), seed=args.seed, clip=src_desc,
               clip_npz=os.path.abspath(clip_out), img_shape=list(img.shape),
               id_cfg=dict(num_frames=T, batch_size=1, max_obj_num=model.max_obj_num),
               mode='model.train() (mask-branch BN in train mode: batch stats; backbone '
                    'BN eval via norm_eval; stem+layer1 frozen), forward_train under '
                    'torch.no_grad (values identical to a grad-enabled forward)',
               droppath_modules=list(default_rates), droppath_default_rates=default_rates,
               how_droppath_off='for every mmdet.models.lstt_block.basic.DropPath module: '
                                'm.drop_prob = 0.0 after model.train() '
                                '(drop_path() returns x unchanged when drop_prob == 0)',
               rng='iai_peer.seed_all(seed) immediately before forward_train '
                   '(same as iai_peer --train-step step 0)',
               threads=torch.get_num_threads(), torch=torch.__version__, **results)
    with open(args.train_losses, 'w') as f:
        json.dump(out, f, indent=1)
    print(f'[train] wrote {args.train_losses}')


# ------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--src', default=DEFAULT_SRC)
    ap.add_argument('--config', default=None)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--seed', type=int, default=0, help='build seed (weights are then loaded)')
    ap.add_argument('--weights', metavar='PTH')
    ap.add_argument('--make-video', metavar='NPZ')
    ap.add_argument('--size', default='360x640')
    ap.add_argument('--frames', type=int, default=10)
    ap.add_argument('--video-seed', type=int, default=0)
    ap.add_argument('--infer', metavar='NPZ')
    ap.add_argument('--video', metavar='NPZ')
    ap.add_argument('--dense-frames', default='0,1')
    ap.add_argument('--loader', choices=['array', 'png', 'jpeg'], default='array')
    ap.add_argument('--train-losses', metavar='JSON')
    ap.add_argument('--clip', metavar='NPZ')
    ap.add_argument('--clip-out', metavar='NPZ')
    ap.add_argument('--train-size', default='180x320')
    args = ap.parse_args()

    if args.make_video:
        H, W = iai_peer.parse_hw(args.size)
        fr = iai_peer.synthetic_video(args.frames, H, W, seed=args.video_seed)
        np.savez_compressed(args.make_video, frames=fr)
        print(f'[video] wrote {args.make_video} frames {fr.shape}')
    if not (args.infer or args.train_losses):
        return
    torch.set_num_threads(args.threads)
    install_py311_shim()
    args.src = iai_shims.install(args.src)
    if not args.weights:
        raise SystemExit('--weights is required')
    if args.infer:
        if not args.video:
            raise SystemExit('--infer needs --video')
        run_infer(args)
    if args.train_losses:
        run_train(args)


if __name__ == '__main__':
    main()
