"""Outlier Exposure sources (spec §6.2): tfds cifar100 / emnist / imagenet2012 (mocked: a real tfds.load cannot
download here), ImageNet-1k val and ImageNet-22k folders, class exclusion, oe_limit."""
import os

import numpy as np
import pytest
from PIL import Image

from fcdd_jax import input_pipeline
from fcdd_jax.data import constants
from fcdd_jax.data import oe
from fcdd_jax.data import tfds_io
from tests import testdata

png = testdata.png
mock_tfds = testdata.mock_tfds   # also the compatibility name for tests/experiments_test.py
write_images = testdata.write_images


def test_cifar100_through_tfds_resized_gray_and_limited(tmp_path, make_config):
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
  exs = [{'image': png(a), 'label': np.int64(i % 3)} for i, a in enumerate(imgs)]
  c = make_config(**{'data.noise_mode': 'cifar100', 'data.supervise_mode': 'noise'})
  with mock_tfds({('cifar100', 'train'): exs}):
    out = oe.load(c, 1, (28, 28), cache_dir=str(tmp_path))
  assert out.shape == (12, 28, 28, 1) and out.dtype == np.uint8
  # PIL: "L" (ITU-R 601-2 luma) then bilinear resize, as torchvision's Resize((h,w)) + Grayscale
  ref = np.asarray(Image.fromarray(imgs[3]).convert('L').resize((28, 28), Image.BILINEAR))
  assert np.abs(out[3, ..., 0].astype(int) - ref.astype(int)).max() <= 1
  c.data.oe_limit = 5
  with mock_tfds({('cifar100', 'train'): exs}):
    lim = oe.load(c, 1, (28, 28), cache_dir=str(tmp_path))
    again = oe.load(c, 1, (28, 28), cache_dir=str(tmp_path))
  assert lim.shape == (5, 28, 28, 1)
  np.testing.assert_array_equal(lim, again)                    # a fixed subset per run (seed)
  assert any(np.array_equal(lim[0], o) for o in out)


def test_emnist_letters_are_transposed_upright(tmp_path, make_config):
  a = np.zeros((28, 28), np.uint8)
  a[2, :] = 255                                                # a horizontal bar stored transposed
  exs = [{'image': png(a), 'label': np.int64(1)}] * 3
  c = make_config(**{'data.noise_mode': 'emnist', 'data.supervise_mode': 'noise'})
  with mock_tfds({('emnist', 'train'): exs}):
    out = oe.load(c, 1, (28, 28), cache_dir=str(tmp_path))
  assert out.shape == (3, 28, 28, 1)
  assert out[0, :, 2, 0].min() == 255 and out[0, 2, 5:, 0].max() == 0   # now a vertical bar


def test_imagenet_val_tfds_excludes_voc_classes_before_the_limit(tmp_path, make_config):
  labels = [14, 15, 344, 345, 990, 0, 1, 2]                    # 14, 344, 990 are VOC-like (bird/horse)
  exs = [{'image': png(np.full((20, 30, 3), 10 * i, np.uint8)), 'label': np.int64(lab)}
         for i, lab in enumerate(labels)]
  c = make_config(**{'data.noise_mode': 'imagenet', 'data.supervise_mode': 'noise'})
  with mock_tfds({('imagenet2012', 'validation'): exs}):
    out = oe.load(c, 3, (16, 16), exclude_1k=constants.VOC_EXCLUDED_IMAGENET1K, cache_dir=str(tmp_path))
    c.data.oe_limit = 3
    lim = oe.load(c, 3, (16, 16), exclude_1k=constants.VOC_EXCLUDED_IMAGENET1K, cache_dir=str(tmp_path))
  kept_values = {10 * i for i, lab in enumerate(labels) if lab not in (14, 344, 990)}
  assert out.shape == (5, 16, 16, 3) and {int(x[0, 0, 0]) for x in out} == kept_values
  assert lim.shape == (3, 16, 16, 3) and {int(x[0, 0, 0]) for x in lim} <= kept_values


def test_voc_exclusion_list_follows_the_reference_rule():
  # spot checks of the token rule: 'pug-dog' is one token (kept), 'hot dog' has the token 'dog' (excluded)
  excl = set(constants.VOC_EXCLUDED_IMAGENET1K)
  assert {153, 281, 344, 444, 466, 664, 779, 934, 990} <= excl
  assert not {254, 449, 484, 654, 833} & excl                   # pug-dog, boathouse, catamaran, minibus, U-boat
  assert len(excl) == 51


def test_imagenet_folders_22k_exclusion_lazy_decoding_and_black_for_corrupt(tmp_path, make_config):
  root = tmp_path / 'fall11'
  rng = np.random.default_rng(1)
  write_images(str(root / 'n00000001'), rng.integers(0, 256, (3, 30, 50, 3), dtype=np.uint8), '.JPEG')
  write_images(str(root / constants.IMAGENET30_WNIDS[4]), rng.integers(0, 256, (2, 30, 50, 3), dtype=np.uint8))
  (root / 'n00000001' / 'broken.JPEG').write_bytes(b'not a jpeg')
  c = make_config(**{'data.noise_mode': 'imagenet22k', 'data.supervise_mode': 'noise', 'data.oe_root': str(root)})
  out = oe.load(c, 3, (24, 24), cache_dir=str(tmp_path / 'cache'))
  assert isinstance(out, oe.LazyImages) and len(out) == 4      # the banjo synset is excluded
  assert out.shape == (4, 24, 24, 3)
  imgs = [out[i] for i in range(4)]
  assert all(x.shape == (24, 24, 3) and x.dtype == np.uint8 for x in imgs)
  assert sum(int(x.max() == 0) for x in imgs) == 1             # the unreadable file is a black image
  assert len(oe.load(c, 3, (24, 24), cache_dir=str(tmp_path / 'cache'))) == 4   # cached file list
  c.data.oe_root = str(tmp_path / 'absent')
  with pytest.raises(FileNotFoundError, match='imagenet22k'):
    oe.load(c, 3, (24, 24))


def test_imagenet_val_folders_exclude_by_class_index(tmp_path, make_config):
  wnids = tfds_io.imagenet1k_wnids()
  root = tmp_path / 'val'
  for k in (14, 15, 990):
    write_images(str(root / wnids[k]), np.zeros((2, 10, 10, 3), np.uint8))
  c = make_config(**{'data.noise_mode': 'imagenet', 'data.supervise_mode': 'noise', 'data.oe_root': str(tmp_path)})
  out = oe.load(c, 3, (8, 8), exclude_1k=constants.VOC_EXCLUDED_IMAGENET1K, cache_dir=str(tmp_path / 'c'))
  assert len(out) == 2 and all(wnids[15] in p for p in out.paths)


def test_pipeline_trains_with_tfds_oe(tmp_path, make_config):
  """FMNIST-like one-vs-rest training batches with mocked CIFAR-100 OE (the fmnist.py default)."""
  testdata.write_fmnist_files(tmp_path, n_per_class=16, hi=40)
  exs = [{'image': png(np.full((32, 32, 3), 250, np.uint8)), 'label': np.int64(0)}] * 6
  c = make_config(batch_size=16, **{'data.name': 'fmnist', 'data.root': str(tmp_path), 'data.preproc': 'none',
                                    'data.noise_mode': 'cifar100', 'data.supervise_mode': 'noise', 'data.normal_class': 0,
                                    'data.cache_dir': str(tmp_path / 'cache')})
  with mock_tfds({('cifar100', 'train'): exs}):
    p = input_pipeline.create(c)
  assert p.oe_images.shape == (6, 28, 28, 1)
  b = p.global_train_batch(0)
  anom = b['label'] == 1
  assert 0 < anom.sum() < 16
  # OE images are bright (250), nominal ones dark (< 40): after Normalize the anomalies are the bright rows
  assert b['image'][anom].mean() > b['image'][~anom].mean() + 1
