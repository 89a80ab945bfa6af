"""Patch training at native resolution (data.patch_size, issue 27): the epoch, the crops and their maps, the
checks, and an end-to-end run whose evaluation scores whole strips at their own size."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from fcdd_jax.pipeline import config_checks
from fcdd_jax import input_pipeline
from fcdd_jax.data import patches
from fcdd_jax.utils.errors import ConfigError


def coded(h, w):
  """uint8 [h, w, 3] whose pixels name their own position (h, w < 256): R = y, G = x, B = (3x + 5y) % 251."""
  y, x = np.mgrid[0:h, 0:w]
  return np.stack([y % 256, x % 256, (3 * x + 5 * y) % 251], -1).astype(np.uint8)


def strips_tree(root, train=((40, 100), (36, 64), (48, 48)), test=((40, 100), (36, 84)), defect=(5, 9, 30, 37)):
  """MVTec layout of non-square 'strips': coded training images of the given (h, w); test/good and test/bad
  of the test sizes, bad images with a bright defect rectangle (y0, y1, x0, x1) and its mask."""
  for sub in ('train/good', 'test/good', 'test/bad', 'ground_truth/bad'):
    os.makedirs(os.path.join(root, sub))
  for i, (h, w) in enumerate(train):
    Image.fromarray(coded(h, w)).save(os.path.join(root, 'train', 'good', f'{i:03d}.png'))
  y0, y1, x0, x1 = defect
  for i, (h, w) in enumerate(test):
    Image.fromarray(coded(h, w)).save(os.path.join(root, 'test', 'good', f'{i:03d}.png'))
    a, m = coded(h, w), np.zeros((h, w), np.uint8)
    a[y0:y1, x0:x1], m[y0:y1, x0:x1] = 255, 255
    Image.fromarray(a).save(os.path.join(root, 'test', 'bad', f'{i:03d}.png'))
    Image.fromarray(m).save(os.path.join(root, 'ground_truth', 'bad', f'{i:03d}_mask.png'))
  return root


def patch_config(make_config, root, tmp_path, **kv):
  base = {'data.root': str(root), 'data.patch_size': 16, 'data.cache_dir': str(tmp_path / 'cache'),
          'model.name': 'FCDD_CNN32_S', 'batch_size': 8, 'num_train_steps': 2, 'log_every_steps': 1,
          'checkpoint_every_steps': 2, 'loss.gauss_std': 1.2, 'eval.num_figure_samples': 4}
  return make_config('custom', **{**base, **kv})


def test_epoch_covers_each_image_area_once():
  assert patches.crops_per_image(256, 4096, 224) == 21          # an AITEX strip: 1,048,576 / 50,176 = 20.9
  assert patches.crops_per_image(224, 224, 224) == 1
  assert patches.crops_per_image(225, 224, 224) == 2
  np.testing.assert_array_equal(patches.pass_indices([(40, 100), (16, 16)], 16, enlarge=2),
                                [0] * 32 + [1] * 2)


def test_random_crop_cuts_image_and_map_alike():
  img = np.random.default_rng(2).integers(0, 256, (300, 700, 3), dtype=np.uint8)
  gt = np.random.default_rng(0).random((300, 700)).astype(np.float32)
  rng = np.random.default_rng(1)
  seen = set()
  for _ in range(50):
    c, g, (y0, x0) = patches.random_crop(img, gt, 64, rng)
    np.testing.assert_array_equal(c, img[y0:y0 + 64, x0:x0 + 64])
    np.testing.assert_array_equal(g, gt[y0:y0 + 64, x0:x0 + 64])
    assert 0 <= y0 <= 300 - 64 and 0 <= x0 <= 700 - 64
    seen.add((y0, x0))
  assert len(seen) > 40   # random positions, not a fixed one


def test_pipeline_crops_at_native_resolution_and_maps_follow(tmp_path, make_config):
  """CutPaste with malformed_normal_gt, no augmentation: every training sample is a 16x16 window of one
  training image at native resolution (its pixels name their positions), and its GT map is 1 exactly where
  the pasted pixels break that window (so a map cut elsewhere than the image would fail)."""
  root = strips_tree(tmp_path / 'strips')
  c = patch_config(make_config, root, tmp_path, **{
      'data.preproc': 'none', 'data.supervise_mode': 'malformed_normal_gt', 'data.noise_mode': 'cutpaste'})
  pipe = input_pipeline.create(c)
  assert pipe.info.image_shape == (16, 16, 3) and pipe.info.train_gtmaps
  crops = 16 + 9 + 9    # ceil(40*100/256), ceil(36*64/256), ceil(48*48/256)
  assert pipe.info.num_train == crops and pipe.info.steps_per_epoch == -(-crops // 8)
  t = pipe.transform
  anomalous = 0
  for step in range(4):
    b = pipe.global_train_batch(step)
    for x, lab, g in zip(b['image'], b['label'], b['gtmap']):
      u8 = np.rint((x * np.asarray(t.std) + np.asarray(t.mean)) * 255).astype(np.int64)
      y, xx = u8[..., 0], u8[..., 1]
      keep = g < 0.5
      # the untouched pixels form one window: position - offset is constant
      dy = y[keep] - np.mgrid[0:16, 0:16][0][keep]
      dx = xx[keep] - np.mgrid[0:16, 0:16][1][keep]
      assert len(set(dy.tolist())) == 1 and len(set(dx.tolist())) == 1
      if lab == 1:
        anomalous += 1
        assert g.any()
        oy, ox = dy[0], dx[0]
        moved = (y != np.mgrid[0:16, 0:16][0] + oy) | (xx != np.mgrid[0:16, 0:16][1] + ox)
        assert moved[g > 0.5].mean() > 0.9     # the map marks the pasted pixels ...
        assert not moved[keep].any()           # ... and nothing else moved
      else:
        assert not g.any()
  assert anomalous > 0


def test_small_images_and_bad_combinations_are_refused(tmp_path, make_config):
  root = strips_tree(tmp_path / 'small', train=((40, 100), (12, 64)))
  c = patch_config(make_config, root, tmp_path)
  with pytest.raises(ConfigError, match=r'001\.png: 64x12 pixels .* smaller than config.data.patch_size=16'):
    input_pipeline.create(c)
  with pytest.raises(ConfigError, match='not a multiple of FCDD_CNN32_S.s stride 4'):
    config_checks.check_config(patch_config(make_config, root, tmp_path, **{'data.patch_size': 18}))
  with pytest.raises(ConfigError, match='not with runs, model.precise_bn'):
    config_checks.check_config(patch_config(make_config, root, tmp_path, runs='0x0-1', **{'model.precise_bn': True}))
  with pytest.raises(ConfigError, match='applies to patch training only'):
    config_checks.check_config(make_config('custom', **{'data.scale': 0.5}))
  with pytest.raises(ConfigError, match='needs an FCDD net'):
    config_checks.check_config(patch_config(make_config, root, tmp_path, **{'model.name': 'CNN32'}))


def test_patch_run_scores_whole_images_at_native_size(tmp_path, make_config):
  """Two steps of patch training, then evaluation of every test image whole at its own size: the pixel AUC
  uses the masks at native resolution, and the figures keep the strips' aspect ratio."""
  from fcdd_jax.pipeline import train
  root = strips_tree(tmp_path / 'strips')
  c = patch_config(make_config, root, tmp_path)
  wd = str(tmp_path / 'run')
  res = train.train_and_evaluate(c, wd)
  assert res['native_resolution']['image_sizes'] == ['100x40', '84x36']
  assert res['pixel_auc'] is not None and 0 <= res['aupro'] <= 1
  with open(os.path.join(wd, 'results.json')) as f:
    assert json.load(f)['thresholds']['pixel_rule'].startswith('f1_max over test pixels (native')
  fig = np.asarray(Image.open(os.path.join(wd, 'heatmaps_paper_local_lbl1.png')))
  # two 40x100 / 36x84 samples of 3 panels each, stacked: width = the widest strip, never squashed
  assert fig.shape[1] == 100 and fig.shape[0] > 2 * 3 * 36
  assert os.path.exists(os.path.join(wd, 'overlays'))
  # predict follows the run: files at native resolution, tiled (--tile 8), equal to one untiled pass
  import jax
  import jax.numpy as jnp
  from fcdd_jax.models import losses
  from fcdd_jax.models import nets as models
  from fcdd_jax.serving import predictor as predict
  from fcdd_jax.models import receptive
  from fcdd_jax.data import image_io
  with pytest.raises(ValueError, match='trained on patches'):
    predict.Predictor(wd, mode='crop')
  pred = predict.Predictor(wd, tile=8)
  assert pred.native is not None and pred.scale == 1.0
  f = os.path.join(root, 'test', 'bad', '001.png')
  img = image_io.load_image(f)
  (score,), (heat,) = pred.predict([img])
  assert heat.shape == (36, 84)
  assert pred.native.tiled.tiles_run > 4   # it was tiled
  net = models.create('FCDD_CNN32_S', any_size=True, dtype=jnp.float32)
  x = pipe_transform_normalize(wd, img)
  low = losses.fcdd_heatmaps(net.apply(pred.variables, jnp.asarray(x[None]), train=False))
  want = np.asarray(receptive.upsample(low, models.reception('FCDD_CNN32_S'), (36, 84), 1.2))[0]
  np.testing.assert_allclose(heat, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
  assert abs(score - float(jax.device_get(want.max()))) <= 1e-4 * abs(score) + 1e-7   # custom.py: image_score max
  out = tmp_path / 'preds'
  from fcdd_jax import predict as predict_cli
  assert predict_cli.main(['--workdir', wd, '--input', os.path.join(root, 'test', 'bad'), '--output', str(out),
                           '--tile', '8']) == 0
  assert Image.open(out / '001_overlay.png').size == (84, 36) and Image.open(out / '001_mask.png').size == (84, 36)


def pipe_transform_normalize(wd, img):
  """The run's value normalisation of a whole uint8 image, from preprocessing.json (mean/std per channel)."""
  with open(os.path.join(wd, 'preprocessing.json')) as f:
    p = json.load(f)
  x = np.repeat(img, 3, -1) if img.shape[-1] == 1 else img
  return ((x.astype(np.float32) / 255 - np.asarray(p['mean'], np.float32)) / np.asarray(p['std'], np.float32))


def _nearest(a, shape):
  """Nearest resize by src = floor(dst * in / out) (the sizes here differ by exact factors of 2)."""
  rows = np.arange(shape[0]) * a.shape[0] // shape[0]
  cols = np.arange(shape[1]) * a.shape[1] // shape[1]
  return a[rows][:, cols]


def test_native_pixel_metrics_are_streamed_at_either_resolution(tmp_path, make_config):
  """data.scale=0.5: heatmaps have half the masks' size. eval.pixel_auc_resolution=original compares the
  heatmaps nearest-resized to the masks, =input the masks nearest-resized to the heatmaps; the streamed
  metrics equal the NumPy definitions on every heatmap held in memory, within the binning bound reported."""
  import jax
  import jax.numpy as jnp
  from fcdd_jax.evaluation import native_eval
  from fcdd_jax.models import nets as models
  from fcdd_jax.pipeline import native_run
  from tests import references
  root = strips_tree(tmp_path / 'strips', test=((40, 100), (36, 84), (44, 60)))
  c = patch_config(make_config, root, tmp_path, **{'data.scale': 0.5})
  pipe = input_pipeline.create(c)
  net = models.create('FCDD_CNN32_S', any_size=True)
  variables = net.init(jax.random.PRNGKey(3), jnp.zeros((1, 16, 16, 3)))
  scorer = native_run.scorer(c, dict(variables), pipe.transform.normalize)
  _, heats = scorer.score(pipe.test_images)   # every heatmap in memory: the reference's input
  masks = pipe.test_masks_original()
  assert heats[0].shape == (20, 50) and masks[0].shape == (40, 100)
  for resolution in ('original', 'input'):
    c.eval.pixel_auc_resolution = resolution
    if resolution == 'original':
      ms, hs = masks, [_nearest(h, m.shape) for h, m in zip(heats, masks)]
    else:
      ms, hs = [_nearest(m, h.shape) for h, m in zip(heats, masks)], heats
    outputs, res = native_eval.evaluate(c, pipe, scorer)
    bounds = res['native_resolution']['pixel_metrics']
    assert bounds['resolution'] == resolution
    labels = np.concatenate([m.reshape(-1) > 0 for m in ms])
    want_auc = references.np_rank_auc(labels, np.concatenate([h.reshape(-1) for h in hs]))
    assert abs(res['pixel_auc'] - want_auc) <= bounds['pixel_auc_max_binning_error'] + 1e-12
    assert abs(res['aupro'] - references.np_aupro(ms, hs)) <= bounds['aupro_max_binning_error'] + 1e-12
    assert bounds['pixel_auc_max_binning_error'] < 1e-4
    where = 'native resolution' if resolution == 'original' else 'net input resolution'
    assert res['thresholds']['pixel_rule'] == f'f1_max over test pixels ({where}, uniform subsample)'
  # the figures keep only the heatmaps they show, equal to the full ones
  assert 0 < len(outputs['heatmap']) <= len(heats)
  for i, h in outputs['heatmap'].items():
    np.testing.assert_array_equal(h, heats[i])
