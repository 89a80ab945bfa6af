"""Supervision modes (spec §6): statistics of every synthetic noise mode, offline supervision (balanced, fixed
set, its own inversion rule, aligned GT maps), the `other` variants (offline one-vs-rest keeps the whole
training set; custom builds a balanced set from labelled anomalies), and the mode/dataset checks."""
import os

import numpy as np
import pytest
from PIL import Image

from fcdd_jax import input_pipeline
from fcdd_jax.pipeline import train
from fcdd_jax.data import anomalies
from fcdd_jax.data import image_io
from tests import testdata

SHAPE = (240, 240, 3)


def _noise(mode, seed=0):
  return anomalies.noise(mode, np.random.default_rng(seed), SHAPE)


def test_gaussian_and_uniform_noise_statistics():
  g = np.concatenate([_noise('gaussian', s).ravel() for s in range(3)])
  assert abs(g.mean()) < 1.0 and abs(g.std() - 64) < 1.0              # N(0,1)·64
  u = np.concatenate([_noise('uniform', s).ravel() for s in range(3)])
  assert u.min() >= 0 and u.max() < 255 and abs(u.mean() - 127.5) < 1 and abs(u.std() - 255 / 12 ** 0.5) < 1
  # float noise becomes an image by per-image min-max rescaling to 0..255 (spec §6.4)
  img, gt = anomalies.make_anomaly('noise', 'gaussian', np.random.default_rng(0), np.zeros(SHAPE, np.uint8))
  assert img.dtype == np.uint8 and img.min() == 0 and img.max() == 255 and gt.min() == 1


def test_solid_noise_is_one_colour_per_image():
  cols = []
  for s in range(50):
    n = _noise('solid', s)
    assert (n == n[0, 0]).all() and n.min() >= 0 and n.max() <= 255
    cols.append(n[0, 0])
  assert len({tuple(c) for c in cols}) == 50 and abs(np.mean(cols) - 127.5) < 15


def test_blob_noise_statistics():
  # p = 0.002 centres per pixel, 6x6 squares of 255: ~115 blobs, covered fraction ≈ 1 - exp(-0.002·36)
  fr = []
  for s in range(5):
    n = _noise('blob', s)
    assert set(np.unique(n).tolist()) <= {0, 255} and (n[..., 0] == n[..., 2]).all()
    fr.append((n[..., 0] > 0).mean())
  assert abs(np.mean(fr) - (1 - np.exp(-0.072))) < 0.01


def test_mixed_blob_noise_statistics():
  # two maps of 34x34 squares at p = 1e-5 (>= 1 each); the first recoloured with per-pixel random values
  for s in range(5):
    n = _noise('mixed_blob', s)
    on = n[..., 0] > 0
    assert on.sum() >= 34 * 34 * 0.9                                 # at least one (mostly visible) square
    assert n.max() <= 510 and len(np.unique(n)) > 20                 # recoloured pixels vary


def _fm_cfg(make_config, tmp_path, **kv):
  base = {'data.name': 'fmnist', 'data.root': str(tmp_path), 'data.normal_class': 2, 'data.preproc': 'lcnaug1',
          'data.online_supervision': False}
  return make_config(batch_size=8, **{**base, **kv})


def test_offline_noise_is_a_fixed_balanced_set(tmp_path, make_config):
  testdata.write_fmnist_files(tmp_path)
  p = input_pipeline.create(_fm_cfg(make_config, tmp_path, **{'data.supervise_mode': 'noise', 'data.noise_mode': 'uniform'}))
  assert p.info.num_train == 32 and p.info.steps_per_epoch == 4     # 16 nominal + 16 generated, fixed
  assert p.train_labels.tolist() == [0] * 16 + [1] * 16
  np.testing.assert_array_equal(p.train_images[:16], image_io.read_idx(
      str(tmp_path / 'train-images-idx3-ubyte.gz'))[32:48, ..., None])
  labels = np.concatenate([p.global_train_batch(s)['label'] for s in range(4)])
  assert labels.sum() == 16                                          # exactly half per epoch, every epoch
  labels2 = np.concatenate([p.global_train_batch(s)['label'] for s in range(4, 8)])
  assert labels2.sum() == 16
  again = input_pipeline.create(_fm_cfg(make_config, tmp_path, **{'data.supervise_mode': 'noise', 'data.noise_mode': 'uniform'}))
  np.testing.assert_array_equal(again.train_images, p.train_images)  # seeded: same set in every process


def test_offline_malformed_normal_uses_the_brightness_inversion_rule(tmp_path, make_config):
  testdata.write_fmnist_files(tmp_path, lo=200, hi=255)                            # bright images
  p = input_pipeline.create(_fm_cfg(make_config, tmp_path, **{'data.supervise_mode': 'malformed_normal',
                                                 'data.noise_mode': 'blob'}))
  nom, anom = p.train_images[:16].astype(int), p.train_images[16:].astype(int)
  # blob noise is +255; on bright pixels (> 0.11·255) the offline rule subtracts it: anomalies only darken
  assert (anom <= nom).all() and (anom < nom).any()
  assert not p.info.train_gtmaps                                     # label loss for malformed_normal offline


def test_offline_malformed_normal_gt_maps_reach_the_loss_aligned(tmp_path, make_config):
  testdata.write_fmnist_files(tmp_path, lo=0, hi=1)                                # black images: blobs only brighten
  c = _fm_cfg(make_config, tmp_path, **{'data.supervise_mode': 'malformed_normal_gt', 'data.noise_mode': 'blob'})
  p = input_pipeline.create(c)
  assert p.info.train_gtmaps
  np.testing.assert_array_equal(p.train_maps[16:], np.any(p.train_images[16:] > 0, -1))
  for s in range(4):
    b = p.global_train_batch(s)
    for x, y, g in zip(b['image'], b['label'], b['gtmap']):
      if y == 0:
        assert g.max() == 0
      else:   # after the random crop/flip the map still marks exactly the bright (blob) pixels
        np.testing.assert_array_equal(g > 0.5, x[..., 0] > x.min() + 1e-3)
  c.num_train_steps = 2
  c.model.name = 'FCDD_CNN28_W'
  c.eval.num_figure_samples = 4
  c.data.cache_dir = str(tmp_path / 'c')
  r = train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert r['image_auc'] == pytest.approx(testdata.roc_area(tmp_path / 'run'), abs=1e-9)


def test_offline_other_keeps_the_whole_training_set_and_online_other_only_nominal(tmp_path, make_config):
  testdata.write_fmnist_files(tmp_path)
  p = input_pipeline.create(_fm_cfg(make_config, tmp_path, **{'data.supervise_mode': 'other'}))
  assert p.info.num_train == 160 and p.train_labels.sum() == 144     # ~9:1 imbalanced (spec §6.1)
  b = p.global_train_batch(0)
  assert b['label'].tolist() == [int(p.train_labels[i]) for i in p.epoch_order(0)[:8]]
  q = input_pipeline.create(_fm_cfg(make_config, tmp_path, **{'data.supervise_mode': 'other', 'data.online_supervision': True}))
  assert q.info.num_train == 16 and q.train_labels is None and q.global_train_batch(0)['label'].sum() == 0


def _normal_anomalous_tree(root, with_anomalous=True):
  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    for sub, n, v in (('normal', 6, 40), ('anomalous', 2, 220)):
      if split == 'train' and sub == 'anomalous' and not with_anomalous:
        continue
      d = root / split / 'widget' / sub
      os.makedirs(d)
      for i in range(n):
        Image.fromarray(rng.integers(v - 20, v + 20, (30, 30, 3), dtype=np.uint8)).save(d / f'{i}.png')


def test_custom_other_builds_a_balanced_set_with_replacement(tmp_path, make_config):
  _normal_anomalous_tree(tmp_path / 'd')
  c = make_config(batch_size=4, **{'data.name': 'custom', 'data.root': str(tmp_path / 'd'),
                                   'data.supervise_mode': 'other', 'data.cache_dir': str(tmp_path / 'c')})
  p = input_pipeline.create(c)
  assert p.info.num_train == 12 and p.train_labels.tolist() == [0] * 6 + [1] * 6
  assert p.train_images[6:].mean() > 150 > p.train_images[:6].mean()  # the labelled (bright) anomalies
  # normalisation statistics come from the nominal images only (spec §5.9)
  assert np.all(np.asarray(p.info.preprocessing['mean']) < 0.3)
  _normal_anomalous_tree(tmp_path / 'e', with_anomalous=False)
  c.data.root = str(tmp_path / 'e')
  with pytest.raises(ValueError, match='labelled training anomalies'):
    input_pipeline.create(c)


def test_offline_supervision_not_available_where_the_reference_refuses(tmp_path, make_config):
  _normal_anomalous_tree(tmp_path / 'd')
  c = make_config(**{'data.name': 'custom', 'data.root': str(tmp_path / 'd'), 'data.online_supervision': False})
  with pytest.raises(ValueError, match='not available for custom'):
    input_pipeline.create(c)
  c = make_config(**{'data.name': 'mvtec', 'data.supervise_mode': 'noise', 'data.noise_mode': 'mvtec_gt',
                     'data.online_supervision': False})
  with pytest.raises(ValueError, match="noise_mode='mvtec_gt'"):
    input_pipeline.create(c)
  c = make_config(**{'data.name': 'fmnist', 'data.supervise_mode': 'noise', 'data.noise_mode': 'mvtec'})
  with pytest.raises(ValueError, match="not available for data.name='fmnist'"):
    input_pipeline.create(c)


def test_offline_confetti_on_the_demo_trains(tmp_path, make_config):
  c = make_config(**{'data.online_supervision': False, 'num_train_steps': 2, 'eval.num_figure_samples': 4})
  p = input_pipeline.create(c)
  assert p.info.num_train == 128 and p.info.train_gtmaps
  b = p.global_train_batch(0)
  assert all((g.min() == 1) if y == 1 else (g.max() == 0) for y, g in zip(b['label'], b['gtmap']))
  r = train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert r['image_auc'] == pytest.approx(testdata.roc_area(tmp_path / 'run'), abs=1e-9)


def test_confetti_pm_darkens_and_brightens_where_confetti_only_darkens():
  gray = np.full((96, 96, 3), 128, np.uint8)
  signs = {'confetti': set(), 'confetti_pm': set()}
  for mode in signs:
    for seed in range(30):
      out, gt = anomalies.make_anomaly('malformed_normal_gt', mode, np.random.default_rng(seed), gray,
                                       size_scale=0.3)
      diff = out.astype(int) - 128
      signs[mode] |= {int(np.sign(v)) for v in (diff.min(), diff.max()) if v}
      np.testing.assert_array_equal(gt > 0, np.abs(diff).max(-1) > 0)
  assert signs['confetti'] == {-1} and signs['confetti_pm'] == {-1, 1}


def test_confetti_draws_unchanged_by_the_signed_variant():
  """Pinned from the implementation before confetti_pm existed (00bac8f): same seeds, same anomalies."""
  a = anomalies.confetti(np.random.default_rng(5), (120, 120, 3), size_scale=0.4)
  assert int(a.sum()) == -365929 and a.max() <= 0
  img = np.random.default_rng(2).integers(0, 256, (80, 80, 3)).astype(np.uint8)
  sums = [int(anomalies.make_anomaly('malformed_normal_gt', 'confetti', np.random.default_rng(s), img,
                                     size_scale=0.4)[0].astype(int).sum()) for s in range(3)]
  assert sums == [2233397, 2331893, 2253412]


@pytest.mark.parametrize('t', [0, 16, 60])
def test_gt_min_change_marks_only_visible_changes(t):
  rng = np.random.default_rng(1)
  img = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
  img[:, :32] = rng.integers(0, 20, (64, 32, 3))      # a dark half: dark confetti changes it little
  for seed in range(5):
    out, gt = anomalies.make_anomaly('malformed_normal_gt', 'confetti', np.random.default_rng(seed), img,
                                     size_scale=0.3, gt_min_change=t)
    ref = np.zeros(img.shape[:2], bool)             # independent reference: a loop over pixels and channels
    for y in range(64):
      for x in range(64):
        ref[y, x] = max(abs(int(out[y, x, ch]) - int(img[y, x, ch])) for ch in range(3)) > t
    np.testing.assert_array_equal(gt > 0, ref)


@pytest.mark.parametrize('bad', [-1, 255, True])   # (a float is refused by the ConfigDict itself)
def test_gt_min_change_checked(bad):
  from fcdd_jax.pipeline import config_checks
  from fcdd_jax.configs import custom
  c = custom.get_config()
  c.data.gt_min_change = bad
  with pytest.raises(config_checks.ConfigError, match='gt_min_change'):
    config_checks.check_config(c)
