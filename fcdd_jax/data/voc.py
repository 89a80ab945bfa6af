"""Pascal VOC 2007 "Clever Hans" experiment (spec §5.8): horse vs rest with `nominal_label=1` (spec §3.6).

Data (one of):
* a local VOC 2007 tree: `data.root` = `VOCdevkit/` (or its `VOC2007/`) with `JPEGImages/`, `Annotations/*.xml`
  and `ImageSets/Main/{train,val}.txt` (the torchvision VOCDetection layout);
* tfds `voc/2007` (downloads on first use; `data.tfds_data_dir`).
Train = the "train" split's images that contain a horse (any annotated object, difficult ones included);
test = the "val" split (horse = the declared normal class). Images are squashed to 224² (bilinear,
keeps watermarks in view), no flip; ImageNet-1k val OE without VOC-like classes by default.
"""
import os
import xml.etree.ElementTree as ET

import numpy as np

from fcdd_jax.data import checks
from fcdd_jax.data import constants
from fcdd_jax.data import image_io
from fcdd_jax.data import oe
from fcdd_jax.data import source
from fcdd_jax.data import tfds_io
from fcdd_jax.data import transforms
from fcdd_jax.utils import tf_setup

HORSE = 'horse'


def _voc2007_dir(root):
  for cand in (root, os.path.join(root, 'VOC2007'), os.path.join(root, 'VOCdevkit', 'VOC2007')):
    if os.path.isdir(os.path.join(cand, 'Annotations')) and os.path.isdir(os.path.join(cand, 'JPEGImages')):
      return cand
  return ''


def has_horse(xml_path):
  """True when any annotated object of a VOC annotation file is a horse."""
  try:
    tree = ET.parse(xml_path)
  except (ET.ParseError, OSError) as e:
    raise ValueError(f'cannot read VOC annotation {xml_path}: {e}') from None
  return any((o.findtext('name') or '').strip() == HORSE for o in tree.getroot().iter('object'))


def _from_folder(config, vdir, cache):
  out = {}
  for split in ('train', 'val'):
    ids_file = os.path.join(vdir, 'ImageSets', 'Main', f'{split}.txt')
    if not os.path.exists(ids_file):
      raise FileNotFoundError(f'{ids_file} is missing: Pascal VOC 2007 needs ImageSets/Main/{{train,val}}.txt')
    with open(ids_file) as f:
      ids = [line.split()[0] for line in f if line.strip()]
    horse = np.asarray([has_horse(os.path.join(vdir, 'Annotations', f'{i}.xml')) for i in ids])
    paths = [os.path.join(vdir, 'JPEGImages', f'{i}.jpg') for i in ids]
    if split == 'train':
      paths = [p for p, h in zip(paths, horse) if h]
      horse = horse[horse]
    imgs, kept = image_io.read_images(paths, 3, (224, 224), on_bad=config.data.on_bad_image, cache=cache)
    pos = {p: k for k, p in enumerate(paths)}
    out[split] = (imgs, horse[[pos[p] for p in kept]])
  return out


def _from_tfds(config):
  tf_setup.tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  d = config.data
  kw = {'data_dir': d.tfds_data_dir} if d.tfds_data_dir else {}
  builder = tfds.builder('voc/2007', **kw)
  horse_id = builder.info.features['objects']['label'].names.index(HORSE)
  out = {}
  for split, name in (('train', 'train'), ('val', 'validation')):
    ds = tfds_io.load_tfds('voc/2007', name, config, hint=(
        'Prepare it once with internet access (`tfds build voc/2007`, --config.data.tfds_data_dir) or pass a '
        'local VOCdevkit/VOC2007 tree as --config.data.root'))
    imgs, horse = [], []
    for ex in tfds.as_numpy(ds):
      h = bool(np.any(np.asarray(ex['objects']['label']) == horse_id))
      if split == 'train' and not h:
        continue
      img = transforms.to_rgb_or_gray(tfds_io.decode(ex['image']), 3)
      imgs.append(transforms.resize_u8(img, (224, 224)))
      horse.append(h)
    out[split] = (np.stack(imgs) if imgs else np.zeros((0, 224, 224, 3), np.uint8), np.asarray(horse, bool))
  return out


def load(config):
  """Pascal VOC 2007 source (spec §5.8)."""
  d = config.data
  c = checks.check_class(config, 1, (HORSE,))
  vdir = _voc2007_dir(d.root) if d.root else ''
  if d.root and not vdir:
    raise FileNotFoundError(f'config.data.root={d.root!r} holds no VOC 2007 tree (expected VOCdevkit/VOC2007 with '
                            'Annotations/, JPEGImages/, ImageSets/Main/); leave it empty to use tfds voc/2007')
  cache = image_io.cache_dir(d.root, d.cache_dir)
  data = _from_folder(config, vdir, cache) if vdir else _from_tfds(config)
  train = data['train'][0]
  test, horse = data['val']
  if not len(train):
    raise ValueError('Pascal VOC 2007 train split holds no horse image')
  labels = (~horse).astype(np.int32)   # 0 = the declared normal class (horse); Pipeline applies nominal_label
  t = transforms.Transform(mean=constants.VOC_MEAN, std=constants.VOC_STD, input_size=(224, 224),
                           raw_size=(224, 224), channels=3, train_geom='none', hflip=False, noise_std=0.001,
                           jitter=(0.01,) * 4, resize='bilinear')
  return source.Source(
      name='pascal_voc', class_names=(HORSE,), normal_class=c, transform=t, train_images=train, test_images=test,
      test_labels=labels, size_scale=224 / 240.0,
      oe_images=oe.load(config, 3, (224, 224), exclude_1k=constants.VOC_EXCLUDED_IMAGENET1K, cache_dir=cache))
