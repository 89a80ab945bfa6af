"""Pascal VOC 2007 horse-vs-rest with nominal_label=1 (spec §5.8, §3.6): a generated VOCdevkit tree, tfds voc/2007
(mocked), and configs/pascal_voc.py end to end with ImageNet-1k val folder OE."""
import os

import numpy as np
import pytest
from PIL import Image

from fcdd_jax import input_pipeline
from fcdd_jax.pipeline import train
from fcdd_jax.data import constants
from fcdd_jax.data import tfds_io
from tests import testdata


def _xml(names):
  objs = ''.join(f'<object><name>{n}</name><difficult>0</difficult></object>' for n in names)
  return f'<annotation><filename>x.jpg</filename>{objs}</annotation>'


def _voc_tree(root, splits):
  """splits: {'train': [[names], ...], 'val': [...]} -> VOCdevkit/VOC2007 with distinct image values."""
  v = os.path.join(root, 'VOCdevkit', 'VOC2007')
  for sub in ('JPEGImages', 'Annotations', os.path.join('ImageSets', 'Main')):
    os.makedirs(os.path.join(v, sub), exist_ok=True)
  k = 0
  for split, objs in splits.items():
    ids = []
    for names in objs:
      i = f'{k:06d}'
      k += 1
      ids.append(i)
      Image.fromarray(np.full((50, 70, 3), 3 * k, np.uint8)).save(os.path.join(v, 'JPEGImages', f'{i}.jpg'))
      with open(os.path.join(v, 'Annotations', f'{i}.xml'), 'w') as f:
        f.write(_xml(names))
    with open(os.path.join(v, 'ImageSets', 'Main', f'{split}.txt'), 'w') as f:
      f.write('\n'.join(ids) + '\n')
  return os.path.join(root, 'VOCdevkit')


SPLITS = {'train': [['horse'], ['person', 'horse'], ['dog'], ['horse'], ['car'], ['horse', 'horse']] * 2,
          'val': [['horse'], ['cat'], ['person'], ['horse', 'person'], ['bus']]}


def test_voc_folder_horse_vs_rest_with_nominal_label_1(tmp_path, make_config):
  root = _voc_tree(str(tmp_path), SPLITS)
  c = make_config(batch_size=8, **{'data.name': 'pascal_voc', 'data.root': root, 'data.preproc': 'aug1',
                                   'data.nominal_label': 1, 'data.supervise_mode': 'noise',
                                   'data.noise_mode': 'uniform', 'data.cache_dir': str(tmp_path / 'cache')})
  p = input_pipeline.create(c)
  assert p.train_images.shape == (8, 224, 224, 3)            # only the train images with a horse
  assert p.info.num_test == 5
  # nominal_label=1: horse (the declared normal class) is label 1 = pushed away, scored positive
  np.testing.assert_array_equal(p.test_labels, [1, 0, 0, 1, 0])
  b = p.global_train_batch(0)
  # training: horse images get label 1, the generated anomalies label 0 (spec §3.6)
  horse_rows = np.array([np.allclose(b['image'][i], b['image'][i].mean(axis=(0, 1)), atol=0.2)
                         for i in range(8)])                  # flat generated images vs noisy uniform noise
  assert set(np.unique(b['label'])) <= {0, 1}
  assert (b['label'][horse_rows] == 1).all() and (b['label'][~horse_rows] == 0).all()


def test_voc_errors(tmp_path, make_config):
  c = make_config(**{'data.name': 'pascal_voc', 'data.root': str(tmp_path), 'data.preproc': 'aug1',
                     'data.supervise_mode': 'noise', 'data.noise_mode': 'uniform'})
  with pytest.raises(FileNotFoundError, match='no VOC 2007 tree'):
    input_pipeline.create(c)
  c.data.normal_class = 1
  with pytest.raises(ValueError, match='out of range'):
    input_pipeline.create(c)


def test_voc_from_mocked_tfds(tmp_path, make_config):
  horse = 12                                                  # tfds VOC label index of 'horse'
  mk = lambda v, labels: {'image': testdata.png(np.full((40, 60, 3), v, np.uint8)),
                          'objects': {'label': np.asarray(labels, np.int64)}}
  train_ex = [mk(10, [horse]), mk(20, [14]), mk(30, [14, horse]), mk(40, [7])]
  val_ex = [mk(50, [horse]), mk(60, [3]), mk(70, [horse, 1])]
  c = make_config(batch_size=2, **{'data.name': 'pascal_voc', 'data.root': '', 'data.preproc': 'aug1',
                                   'data.nominal_label': 1, 'data.supervise_mode': 'unsupervised'})
  with testdata.mock_tfds({('voc', 'train'): train_ex, ('voc', 'validation'): val_ex}):
    p = input_pipeline.create(c)
  assert [int(x[0, 0, 0]) for x in p.train_images] == [10, 30]
  np.testing.assert_array_equal(p.test_labels, [1, 0, 1])


def test_pascal_voc_config_end_to_end_with_imagenet_oe(tmp_path, make_config):
  root = _voc_tree(str(tmp_path), SPLITS)
  wnids = tfds_io.imagenet1k_wnids()
  rng = np.random.default_rng(3)
  for k in (15, 344):                                          # 344 (hippopotamus, "river horse") is excluded
    testdata.write_images(str(tmp_path / 'inval' / wnids[k]), rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8))
  c = testdata.tiny(make_config('pascal_voc'), tmp_path, batch_size=8, num_train_steps=1,
                    checkpoint_every_steps=1, **{'data.root': root, 'data.oe_root': str(tmp_path / 'inval'),
                                                 'eval.batch_size': 8,
                                                 'model.name': 'FCDD_CNN224'})   # a small 224² net: the data path
                                                                                 # is tested (VGG: models_test)
  p = input_pipeline.create(c)
  assert len(p.oe_images) == 3 and all(wnids[15] in f for f in p.oe_images.paths)
  r = train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert r['image_auc'] == pytest.approx(testdata.roc_area(tmp_path / 'run'), abs=1e-9)
