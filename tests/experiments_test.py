"""Each paper config trains end to end on a tiny budget on generated (or small real) data; the AUCs it reports
equal sklearn's on the run's own test outputs (masks resized with a NumPy nearest rule), and the test split
has the expected labels."""
import json
import os

import numpy as np
import pytest
from sklearn import metrics

from fcdd_jax.evaluation import results
from fcdd_jax.pipeline import train
from tests import support
from tests import testdata


@pytest.fixture
def evaluated(monkeypatch):
  """The test outputs and pipeline of the run, captured where it computes its AUCs."""
  seen = {}
  original = results.compute_metrics
  def spy(config, pipeline, outputs):
    seen.update(pipeline=pipeline, outputs=outputs)
    return original(config, pipeline, outputs)
  monkeypatch.setattr(results, 'compute_metrics', spy)
  return seen


def _check_aucs(r, seen, n_nominal, n_anomalous, pixel):
  """image AUC = sklearn's on the gathered scores; pixel AUC = sklearn's over all mask pixels (masks >= 1
  anomalous, heatmaps resized to each mask by floor(i * in / out)), or None without masks."""
  out = seen['outputs']
  assert np.bincount(out['label'].astype(int), minlength=2).tolist() == [n_nominal, n_anomalous]
  assert r['image_auc'] == pytest.approx(metrics.roc_auc_score(out['label'], out['score']), abs=1e-9)
  if not pixel:
    assert r['pixel_auc'] is None
    return
  masks = seen['pipeline'].test_masks_original()
  gts, maps = [], []
  for m, h in zip(masks, out['heatmap']):
    rows, cols = np.arange(m.shape[0]) * h.shape[0] // m.shape[0], np.arange(m.shape[1]) * h.shape[1] // m.shape[1]
    gts.append(np.asarray(m).reshape(-1) >= 1)
    maps.append(h[rows][:, cols].reshape(-1))
  want = metrics.roc_auc_score(np.concatenate(gts), np.concatenate(maps).astype(np.float64))
  assert r['pixel_auc'] == pytest.approx(want, abs=1e-9)


def test_fmnist_config(tmp_path, evaluated):
  from fcdd_jax.configs import fmnist  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  testdata.write_idx(tmp_path / 'train-images-idx3-ubyte.gz', rng.integers(0, 255, (80, 28, 28)))
  testdata.write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', np.repeat(np.arange(10), 8))
  testdata.write_idx(tmp_path / 't10k-images-idx3-ubyte.gz', rng.integers(0, 255, (20, 28, 28)))
  testdata.write_idx(tmp_path / 't10k-labels-idx1-ubyte.gz', np.repeat(np.arange(10), 2))
  # the config's own OE source: tfds cifar100 (mocked: a real tfds.load cannot download here)
  exs = [{'image': testdata.png(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)), 'label': np.int64(i % 100)}
         for i in range(10)]
  c = testdata.tiny(fmnist.get_config(), tmp_path, **{'data.root': str(tmp_path)})
  assert c.data.noise_mode == 'cifar100'
  with testdata.mock_tfds({('cifar100', 'train'): exs}):
    r = train.train_and_evaluate(c, str(tmp_path / 'run'))
  _check_aucs(r, evaluated, 2, 18, pixel=False)   # one-vs-rest: 2 test images of class 0, 18 others


def test_cifar10_config(cifar_small, tmp_path, evaluated):
  from fcdd_jax.configs import cifar10  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  exs = [{'image': testdata.png(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)), 'label': np.int64(i)}
         for i in range(10)]
  c = testdata.tiny(cifar10.get_config(), tmp_path, **{'data.root': cifar_small})
  assert c.data.noise_mode == 'cifar100'     # the config's own OE source, tfds (mocked here)
  with testdata.mock_tfds({('cifar100', 'train'): exs}):
    r = train.train_and_evaluate(c, str(tmp_path / 'run'))
  _check_aucs(r, evaluated, 5, 45, pixel=False)


def test_mvtec_config_with_pretrained_npz(tmp_path, evaluated):
  from fcdd_jax.configs import mvtec  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'mvtec'
  testdata.write_mvtec_tree(str(root / 'bottle'), size=64, n_train=4)
  npz = str(tmp_path / 'vgg.npz')
  np.savez(npz, **support.fake_vgg_weights())
  c = testdata.tiny(mvtec.get_config(), tmp_path, batch_size=8, num_train_steps=1, checkpoint_every_steps=1,
            **{'data.root': str(root), 'model.pretrained_path': npz, 'eval.batch_size': 8})
  r = train.train_and_evaluate(c, str(tmp_path / 'run'))
  _check_aucs(r, evaluated, 3, 3, pixel=True)
  with open(tmp_path / 'run' / 'preprocessing.json') as f:
    assert json.load(f)['kind'] == 'lcn'


def test_custom_config_on_real_bottle_subset(tmp_path, evaluated):
  if not os.path.isdir(testdata.BOTTLE):
    pytest.skip('shared MVTec bottle data not available')
  root = testdata.bottle_subset(tmp_path / 'bottle', {'train/good': 8, 'test/good': 2, 'test/broken_large': 2})
  from fcdd_jax.configs import custom  # pylint: disable=g-import-not-at-top
  c = testdata.tiny(custom.get_config(), tmp_path, batch_size=8, num_train_steps=1, checkpoint_every_steps=1,
            **{'data.root': str(root), 'model.name': 'FCDD_CNN224_VGG_NOPT', 'eval.batch_size': 8})
  r = train.train_and_evaluate(c, str(tmp_path / 'run'))
  _check_aucs(r, evaluated, 2, 2, pixel=False)     # no ground_truth folder: no pixel AUC


@pytest.mark.parametrize('remove', [False, True])
def test_mvtec_semi_supervised_config(tmp_path, remove, evaluated):
  """mvtec_gt: oe_limit real anomalies per defect type with their masks (spec §6.5), optionally removed
  from the test set (spec §11.8)."""
  from fcdd_jax.configs import mvtec_semi  # pylint: disable=g-import-not-at-top
  from fcdd_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'mvtec'
  testdata.write_mvtec_tree(str(root / 'bottle'), size=64, n_train=8)
  c = testdata.tiny(mvtec_semi.get_config(), tmp_path, batch_size=8, num_train_steps=1, checkpoint_every_steps=1,
            **{'data.root': str(root), 'model.name': 'FCDD_CNN224', 'eval.batch_size': 8,   # (a small 224 net: the
               'data.remove_oe_from_test': remove})                                        # data path is tested)
  p = input_pipeline.create(c)
  assert p.oe_images.shape == (1, 240, 240, 3)                # one defect type ('crack'), oe_limit 1
  assert p.info.num_test == (5 if remove else 6)
  b = p.global_train_batch(0)
  anom = b['label'] == 1
  assert anom.any()
  # the real mask (a square), not an all-ones map, after the joint augmentation
  assert all(0 < b['gtmap'][i].mean() < 0.5 for i in np.flatnonzero(anom))
  r = train.train_and_evaluate(c, str(tmp_path / 'run'))
  _check_aucs(r, evaluated, 3, 2 if remove else 3, pixel=True)
