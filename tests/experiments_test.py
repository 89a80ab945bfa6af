"""Each paper config trains end to end on a tiny budget on generated (or small real) data."""
import json
import os

import numpy as np
import pytest

from fcdd_jax import train
from tests import input_pipeline_test as ipt
from tests import pretrained_test as prt


def _set(c, **kv):
  c.update_from_flattened_dict(kv)   # 'data.root' style field paths
  return c


def _tiny(c, tmp_path, **kv):
  base = dict(num_train_steps=2, log_every_steps=1, checkpoint_every_steps=2, batch_size=8,
              **{'eval.num_figure_samples': 4, 'data.cache_dir': str(tmp_path / 'cache')})
  return _set(c, **{**base, **kv})


def test_fmnist_config(tmp_path):
  from configs import fmnist  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  ipt._write_idx(tmp_path / 'train-images-idx3-ubyte.gz', rng.integers(0, 255, (80, 28, 28)))  # pylint: disable=protected-access
  ipt._write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', np.repeat(np.arange(10), 8))  # pylint: disable=protected-access
  ipt._write_idx(tmp_path / 't10k-images-idx3-ubyte.gz', rng.integers(0, 255, (20, 28, 28)))  # pylint: disable=protected-access
  ipt._write_idx(tmp_path / 't10k-labels-idx1-ubyte.gz', np.repeat(np.arange(10), 2))  # pylint: disable=protected-access
  # the config's own OE source: tfds cifar100 (mocked: a real tfds.load cannot download here)
  from tests import oe_test  # pylint: disable=g-import-not-at-top
  exs = [{'image': oe_test.png(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)), 'label': np.int64(i % 100)}
         for i in range(10)]
  c = _tiny(fmnist.get_config(), tmp_path, **{'data.root': str(tmp_path)})
  assert c.data.noise_mode == 'cifar100'
  with oe_test.mock_tfds({('cifar100', 'train'): exs}):
    r = train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert 0 <= r['image_auc'] <= 1 and r['pixel_auc'] is None


def test_cifar10_config(cifar_small, tmp_path):
  from configs import cifar10  # pylint: disable=g-import-not-at-top
  from tests import oe_test  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  exs = [{'image': oe_test.png(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)), 'label': np.int64(i)}
         for i in range(10)]
  c = _tiny(cifar10.get_config(), tmp_path, **{'data.root': cifar_small})
  assert c.data.noise_mode == 'cifar100'     # the config's own OE source, tfds (mocked here)
  with oe_test.mock_tfds({('cifar100', 'train'): exs}):
    r = train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert 0 <= r['image_auc'] <= 1


def test_mvtec_config_with_pretrained_npz(tmp_path):
  from configs import mvtec  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'mvtec'
  ipt._write_mvtec_tree(str(root / 'bottle'), size=64, n_train=4)  # pylint: disable=protected-access
  npz = str(tmp_path / 'vgg.npz')
  np.savez(npz, **prt._fake_weights())  # pylint: disable=protected-access
  c = _tiny(mvtec.get_config(), tmp_path, batch_size=8, num_train_steps=1, checkpoint_every_steps=1,
            **{'data.root': str(root), 'model.pretrained_path': npz, 'eval.batch_size': 8})
  r = train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert 0 <= r['image_auc'] <= 1 and 0 <= r['pixel_auc'] <= 1
  with open(tmp_path / 'run' / 'preprocessing.json') as f:
    assert json.load(f)['kind'] == 'lcn'


def test_custom_config_on_real_bottle_subset(tmp_path):
  src = os.path.join(ipt.SHARED, 'mvtec_bottle_256', 'bottle')
  if not os.path.isdir(src):
    pytest.skip('shared MVTec bottle data not available')
  import shutil  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'bottle'
  for sub, n in (('train/good', 8), ('test/good', 2), ('test/broken_large', 2)):
    os.makedirs(root / sub)
    for f in sorted(os.listdir(os.path.join(src, sub)))[:n]:
      shutil.copy(os.path.join(src, sub, f), root / sub / f)
  from configs import custom  # pylint: disable=g-import-not-at-top
  c = _tiny(custom.get_config(), tmp_path, batch_size=8, num_train_steps=1, checkpoint_every_steps=1,
            **{'data.root': str(root), 'model.name': 'FCDD_CNN224_VGG_NOPT', 'eval.batch_size': 8})
  r = train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert 0 <= r['image_auc'] <= 1 and r['pixel_auc'] is None


@pytest.mark.parametrize('remove', [False, True])
def test_mvtec_semi_supervised_config(tmp_path, remove):
  """mvtec_gt: oe_limit real anomalies per defect type with their masks (spec §6.5), optionally removed
  from the test set (spec §11.8)."""
  from configs import mvtec_semi  # pylint: disable=g-import-not-at-top
  from fcdd_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'mvtec'
  ipt._write_mvtec_tree(str(root / 'bottle'), size=64, n_train=8)  # pylint: disable=protected-access
  c = _tiny(mvtec_semi.get_config(), tmp_path, batch_size=8, num_train_steps=1, checkpoint_every_steps=1,
            **{'data.root': str(root), 'model.name': 'FCDD_CNN224_VGG_NOPT', 'eval.batch_size': 8,
               'data.remove_oe_from_test': remove})
  p = input_pipeline.create(c)
  assert p.oe_images.shape == (1, 240, 240, 3)                # one defect type ('crack'), oe_limit 1
  assert p.info.num_test == (5 if remove else 6)
  b = p.global_train_batch(0)
  anom = b['label'] == 1
  assert anom.any()
  # the real mask (a square), not an all-ones map, after the joint augmentation
  assert all(0 < b['gtmap'][i].mean() < 0.5 for i in np.flatnonzero(anom))
  r = train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert 0 <= r['pixel_auc'] <= 1
