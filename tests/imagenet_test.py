"""ImageNet-30 (spec §5.6) from class folders and from tfds imagenet2012 (mocked), and configs/imagenet.py end to
end with ImageNet-22k folder OE on a tiny budget."""
import os

import numpy as np
import pytest

from fcdd_jax import input_pipeline
from fcdd_jax.pipeline import train
from fcdd_jax.data import constants
from fcdd_jax.data import tfds_io
from tests import testdata


def test_imagenet30_constants_match_tfds_labels():
  wnids = tfds_io.imagenet1k_wnids()
  idx = [wnids.index(w) for w in constants.IMAGENET30_WNIDS]
  # acorn 988, airliner 404, ..., stingray 6, volcano 980 (torchvision/tfds class indices)
  assert idx[0] == 988 and idx[1] == 404 and idx[25] == 6 and idx[29] == 980
  assert len(set(constants.IMAGENET30_WNIDS)) == 30 == len(constants.IMAGENET30_CLASSES)


def test_imagenet30_from_folders(tmp_path, make_config):
  testdata.imagenet_folders(str(tmp_path / 'in'))
  c = make_config(batch_size=8, **{'data.name': 'imagenet', 'data.root': str(tmp_path / 'in'),
                                   'data.preproc': 'aug1', 'data.supervise_mode': 'noise',
                                   'data.noise_mode': 'uniform', 'data.normal_class': 3,
                                   'data.cache_dir': str(tmp_path / 'cache')})
  p = input_pipeline.create(c)
  assert p.info.image_shape == (224, 224, 3) and p.info.num_classes == 30
  assert p.train_images.shape == (10, 256, 256, 3)           # Resize(256) + centre crop, raw 256²
  assert p.info.num_test == 60 and p.test_labels.sum() == 58  # 2 nominal vs 58 anomalous
  b = p.global_train_batch(0)
  assert b['image'].shape == (8, 224, 224, 3) and np.isfinite(b['image']).all()
  e = next(p.eval_batches('test', 8))
  assert e['image'].shape == (8, 224, 224, 3)
  # test geometry: centre 224 crop of the stored 256², ImageNet normalisation
  x = p.test_images[0][16:240, 16:240].astype(np.float32) / 255
  ref = (x - np.array(constants.IMAGENET_MEAN)) / np.array(constants.IMAGENET_STD)
  np.testing.assert_allclose(e['image'][0], ref, atol=1e-5)


def test_imagenet30_errors(tmp_path, make_config):
  c = make_config(**{'data.name': 'imagenet', 'data.root': str(tmp_path / 'nope'), 'data.preproc': 'aug1',
                     'data.supervise_mode': 'noise', 'data.noise_mode': 'uniform'})
  with pytest.raises(FileNotFoundError, match='ImageNet-1k'):
    input_pipeline.create(c)
  c.data.supervise_mode = 'malformed_normal'
  with pytest.raises(ValueError, match='allowed: unsupervised, other, noise'):
    input_pipeline.create(c)
  c.data.supervise_mode = 'noise'
  c.data.online_supervision = False
  with pytest.raises(ValueError, match='online_supervision=False is not available for imagenet'):
    input_pipeline.create(c)


def test_imagenet30_from_mocked_tfds(tmp_path, make_config):
  wnids = tfds_io.imagenet1k_wnids()
  idx = [wnids.index(w) for w in constants.IMAGENET30_WNIDS]
  rng = np.random.default_rng(0)
  img = lambda: testdata.png(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
  train = [{'image': img(), 'label': np.int64(lab)} for lab in [idx[0]] * 6 + [idx[1]] * 3 + [0] * 3]
  val = [{'image': img(), 'label': np.int64(lab)} for lab in [idx[0]] * 2 + [idx[5]] * 2 + [idx[29]] * 2 + [7] * 4]
  c = make_config(batch_size=4, **{'data.name': 'imagenet', 'data.root': '', 'data.preproc': 'aug1',
                                   'data.supervise_mode': 'unsupervised', 'data.normal_class': 0,
                                   'data.cache_dir': str(tmp_path / 'cache')})
  with testdata.mock_tfds({('imagenet2012', 'train'): train, ('imagenet2012', 'validation'): val}):
    p = input_pipeline.create(c)
  assert p.train_images.shape == (6, 256, 256, 3)             # only the nominal class (acorn)
  np.testing.assert_array_equal(p.test_labels, [0, 0, 1, 1, 1, 1])   # the 30 classes only
  p2 = input_pipeline.create(c)                                # from the cache, no tfds
  np.testing.assert_array_equal(p2.test_images, p.test_images)


def test_imagenet_config_end_to_end_with_22k_oe(tmp_path, make_config):
  testdata.imagenet_folders(str(tmp_path / 'in'), n_train=8, n_val=1, classes=range(30))
  oe_root = tmp_path / 'fall11'
  testdata.write_images(str(oe_root / 'n09999999'), np.random.default_rng(2).integers(0, 256, (4, 50, 70, 3),
                                                                                  dtype=np.uint8), '.JPEG')
  c = testdata.tiny(make_config('imagenet'), tmp_path, batch_size=8, num_train_steps=1,
                    checkpoint_every_steps=1, **{'data.root': str(tmp_path / 'in'),
                                                 'data.oe_root': str(oe_root), 'eval.batch_size': 8,
                                                 'model.name': 'FCDD_CNN224'})   # a small 224² net: the data path
                                                                                 # is tested (VGG: models_test)
  r = train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert r['image_auc'] == pytest.approx(testdata.roc_area(tmp_path / 'run'), abs=1e-9)
  assert r['pixel_auc'] is None
