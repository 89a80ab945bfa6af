"""Figures at real image sizes: every figure is written and its image and heatmap panels line up.

A few training steps on 224² nets: the shared MVTec bottle (256² images, no masks) through the custom
config, and generated MVTec-layout trees with masks at non-224 sizes (custom and mvtec configs).
"""
import os

import numpy as np
import pytest
from PIL import Image

from fcdd_jax.evaluation import figures
from fcdd_jax import input_pipeline
from fcdd_jax.pipeline import train
from tests import testdata

PANEL = 224


# a 224² from-scratch net and a short run, small enough for the suite
SMALL = {'model.name': 'FCDD_CNN224', 'batch_size': 8, 'num_train_steps': 2, 'log_every_steps': 1,
         'checkpoint_every_steps': 100, 'eval.batch_size': 32, 'eval.num_figure_samples': 6}


def _write_tree(root, h, w, n_train=8, n_test=4):
  """MVTec layout with masks: gray noise images, defects as bright rectangles marked in the masks."""
  rng = np.random.default_rng(1)
  os.makedirs(os.path.join(root, 'train', 'good'))
  for i in range(n_train):
    Image.fromarray(rng.integers(60, 120, (h, w, 3), dtype=np.uint8)).save(
        os.path.join(root, 'train', 'good', f'{i:03d}.png'))
  for d in ('good', 'scratch'):
    os.makedirs(os.path.join(root, 'test', d))
    for i in range(n_test):
      a = rng.integers(60, 120, (h, w, 3), dtype=np.uint8)
      if d == 'scratch':
        m = np.zeros((h, w), np.uint8)
        m[h // 3:h // 2, w // 4:w // 2] = 255
        a[m > 0] = 250
        os.makedirs(os.path.join(root, 'ground_truth', d), exist_ok=True)
        Image.fromarray(m).save(os.path.join(root, 'ground_truth', d, f'{i:03d}_mask.png'))
      Image.fromarray(a).save(os.path.join(root, 'test', d, f'{i:03d}.png'))


FIGURES = ('heatmaps_paper_local_lbl0.png', 'heatmaps_paper_local_lbl1.png', 'heatmaps_paper_global_lbl0.png',
           'heatmaps_paper_global_lbl1.png', 'heatmaps_global.png', 'train_heatmaps_global.png',
           'test_samples.png', 'ds_preview.png', 'roc_curve.png', 'loss_curves.png')


def _check_run(workdir, config, with_masks):
  for f in FIGURES + (('gtmap_roc_curve.png',) if with_masks else ()):
    assert os.path.getsize(os.path.join(workdir, f)) > 0, f
  # test_samples.png: rows of 224² panels (inputs, heatmaps[, ground truth]), 5 + 5 columns at most
  ts = np.asarray(Image.open(os.path.join(workdir, 'test_samples.png')).convert('RGB'))
  rows = 3 if with_masks else 2
  assert ts.shape[0] == rows * PANEL and ts.shape[1] % PANEL == 0, ts.shape
  # the input row shows the real test images at net input size (what the heatmap covers)
  pipe = input_pipeline.create(config)
  first = pipe.display_images('test', [int(np.flatnonzero(pipe.test_labels == 0)[0])])[0]
  np.testing.assert_array_equal(ts[:PANEL, :PANEL], first)
  assert ts[PANEL:2 * PANEL].std() > 0                      # a heatmap, not an empty panel
  if with_masks:                                            # ground truth row of an anomalous sample
    assert ts[2 * PANEL:, -PANEL:].max() == 255
  for f in ('heatmaps_paper_local_lbl1.png', 'heatmaps_paper_global_lbl0.png'):
    im = np.asarray(Image.open(os.path.join(workdir, f)))
    assert im.shape[0] == rows * PANEL and im.shape[1] % PANEL == 0, (f, im.shape)
  # many-panel figures use thumbnails of figures.THUMBNAIL pixels
  g = np.asarray(Image.open(os.path.join(workdir, 'heatmaps_global.png')))
  assert g.shape[1] % figures.THUMBNAIL == 0
  overlays = os.listdir(os.path.join(workdir, 'overlays'))
  assert overlays
  for f in overlays:
    assert Image.open(os.path.join(workdir, 'overlays', f)).size == (PANEL, PANEL)


@pytest.mark.skipif(not os.path.isdir(testdata.BOTTLE), reason=f'{testdata.BOTTLE} not available')
def test_real_bottle_figures_at_224(make_config, tmp_path):
  # 40 real images (the whole bottle, 292, cost the suite ~15 s of decoding, scoring and figures more)
  root = testdata.bottle_subset(tmp_path / 'bottle', {'train/good': 16, 'test/good': 12, 'test/broken_large': 12})
  cfg = make_config('custom', **SMALL, **{'data.root': root, 'data.cache_dir': str(tmp_path / 'cache')})
  res = train.train_and_evaluate(cfg, str(tmp_path / 'run'))
  assert res['peak_rss_bytes'] > 0 and res['compile_seconds'] > 0
  _check_run(str(tmp_path / 'run'), cfg, with_masks=False)


@pytest.mark.parametrize('module,size', [('custom', (300, 260)), ('mvtec', (256, 256))])
def test_generated_masked_tree_figures(make_config, module, size, tmp_path):
  if module == 'mvtec':
    root = str(tmp_path / 'mvtec')
    _write_tree(os.path.join(root, 'bottle'), *size)      # normal_class 0 = bottle
    overrides = {'data.root': root}
  else:
    root = str(tmp_path / 'parts')
    _write_tree(root, *size)
    overrides = {'data.root': root}
  cfg = make_config(module, **SMALL, **overrides, **{'data.cache_dir': str(tmp_path / 'cache')})
  res = train.train_and_evaluate(cfg, str(tmp_path / 'run'))
  assert res['pixel_auc'] is not None
  _check_run(str(tmp_path / 'run'), cfg, with_masks=True)


def test_grid_refuses_panels_of_different_sizes():
  with pytest.raises(ValueError, match=r'image \(248, 248\), heatmap \(224, 224\)'):
    figures.grid([np.zeros((248, 248, 3), np.uint8)], [np.zeros((224, 224))])


def test_thumbnail_is_a_nearest_subsample():
  x = np.arange(256 * 256).reshape(256, 256)
  t = figures.thumbnail(x, 128)
  np.testing.assert_array_equal(t, x[::2, ::2])
  assert figures.thumbnail(x, 300) is x


def _global_norm_reference(h, reference, q):
  """Spec §8.3's global normalisation, written out: subtract the reference's minimum, divide by the
  int(q·(n−1))-th smallest value of (reference − minimum), clamp to [0, 1]."""
  ref = np.sort(np.asarray(reference, np.float64).ravel())
  lo = ref[0]
  qq = ref[int(q * (ref.size - 1))] - lo
  return np.clip((np.asarray(h, np.float64) - lo) / qq, 0, 1)


def test_global_scale_is_the_references_minimum_and_quantile():
  rng = np.random.default_rng(0)
  reference, h = rng.gamma(2.0, size=(6, 20, 20)), rng.gamma(2.0, size=(20, 20)) * 1.5
  for q in (0.5, 0.97, 1.0):
    np.testing.assert_allclose(figures.global_norm(h, figures.global_scale(reference, q)),
                               _global_norm_reference(h, reference, q), rtol=1e-12)


@pytest.mark.parametrize('reference', ['upsampled', 'lowres'])
def test_global_figures_normalise_by_the_chosen_maps(tmp_path, reference):
  """The overlays (a black input, so the colour is the heatmap's jet at half alpha) are normalised by the
  displayed upsampled maps (default) or, as the reference code does, by the low-res maps, which are on a
  smaller scale than the upsampled ones: then most displayed pixels saturate."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  heat = rng.gamma(2.0, size=(4, 128, 128))
  low = heat[:, ::8, ::8] / 2.6                     # the upsampling multiplies a map by ~2.6 (σ 10, stride 8)
  outputs = {'score': heat.mean((1, 2)), 'label': np.array([0, 1, 0, 1]), 'heatmap': heat,
             'heatmap_lowres': low, 'index': np.arange(4)}
  cfg = ml_collections.ConfigDict({'eval': {'quantile': 0.97, 'figure_reference': reference}})
  figures.write_run_figures(str(tmp_path), cfg, None, outputs)
  got = np.asarray(Image.open(tmp_path / 'overlays' / 'test_00002_label0.png'))
  # balanced reference of 2 + 2 images: all four maps
  want01 = _global_norm_reference(heat[2], heat if reference == 'upsampled' else low, 0.97)
  jet = (matplotlib.colormaps['jet'](want01)[..., :3] * 255).round()
  np.testing.assert_array_equal(got, (jet * 0.5).round().astype(np.uint8))
  red = (np.array(matplotlib.colormaps['jet'](1.0)[:3]) * 255).round()   # the colour of a clamped (saturated) pixel
  saturated = float((got == (red * 0.5).round()).all(-1).mean())
  assert (saturated < 0.05) if reference == 'upsampled' else (saturated > 0.3), saturated


def test_reference_pixels_are_balanced_and_bounded(monkeypatch):
  heats = [np.full((10, 10), k, np.float32) for k in range(6)]
  ref = figures.reference_pixels(heats, [0, 0, 0, 0, 1, 1])
  assert ref.size == 400 and (ref >= 4).sum() == 200    # 2 nominal + 2 anomalous images, every pixel
  monkeypatch.setattr(figures, 'REFERENCE_PIXELS', 100)  # large maps: each pixel kept with probability 100/400
  ref = figures.reference_pixels(np.stack(heats), [0, 0, 0, 0, 1, 1])
  assert 50 < ref.size < 150 and 0 < (ref >= 4).sum() < ref.size
