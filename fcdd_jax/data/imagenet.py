"""ImageNet-30 one-vs-rest (spec §5.6) as a `Source` (class names and synsets: `constants.IMAGENET30_*`).

Data (one of):
* ImageNet-1k as class folders: `data.root/train/<wnid>/*.JPEG` and `data.root/val/<wnid>/*.JPEG` (the layout
  torchvision's ImageNet and most clusters use);
* tfds `imagenet2012` from its manual download: `data.root` holds `ILSVRC2012_img_train.tar` and
  `ILSVRC2012_img_val.tar` (prepared once into `data.tfds_data_dir`; then `data.root` may be empty).
Train = ImageNet-1k train images of the nominal class (~1300); test = the val images of all 30 classes
(50 each: 50 nominal vs 1450 anomalous). Images are stored at Resize(256, shorter side) + centre 256² crop
("raw" 256²); train: RandomCrop(224) + flip + jitter + noise, test: centre 224 crop; ImageNet mean/std.
"""
import os

import numpy as np

from fcdd_jax.data import checks
from fcdd_jax.data import constants
from fcdd_jax.data import image_io
from fcdd_jax.data import oe
from fcdd_jax.data import source
from fcdd_jax.data import tfds_io
from fcdd_jax.data import transforms
from fcdd_jax.utils import tf_setup


def _folder_root(root):
  return bool(root) and all(os.path.isdir(os.path.join(root, s, constants.IMAGENET30_WNIDS[0]))
                            for s in ('train', 'val'))


def _from_folders(config, c, cache):
  d = config.data
  kw = dict(shorter=True, on_bad=d.on_bad_image, cache=cache)
  folder = os.path.join(d.root, 'train', constants.IMAGENET30_WNIDS[c])
  read = lambda folder: image_io.read_images(image_io.require_images(image_io.list_images(folder), folder), 3,
                                             (256, 256), **kw)[0]
  train = read(folder)
  tests, labels = [], []
  for k, wnid in enumerate(constants.IMAGENET30_WNIDS):
    folder = os.path.join(d.root, 'val', wnid)
    if not os.path.isdir(folder):
      raise FileNotFoundError(f'{folder} is missing: ImageNet-30 needs val/<wnid>/ for all 30 classes '
                              '(' + ', '.join(constants.IMAGENET30_WNIDS) + ')')
    imgs = read(folder)
    tests.append(imgs)
    labels += [int(k != c)] * len(imgs)
  return train, np.concatenate(tests), np.asarray(labels, np.int32)


def _from_tfds(config, c, cache):
  """Nominal-class train images and the 30 classes' val images from tfds imagenet2012 (filtered on the
  encoded records: only the wanted images are decoded), cached as .npz."""
  import hashlib  # pylint: disable=g-import-not-at-top
  tf_setup.tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  d = config.data
  key = hashlib.sha1(repr(('in30', c, d.root, d.tfds_data_dir)).encode()).hexdigest()[:20]
  path = os.path.join(cache, f'imagenet30_{key}.npz')
  if os.path.exists(path):
    with np.load(path) as z:
      return z['train'], z['test'], z['labels']
  wnids = tfds_io.imagenet1k_wnids()
  idx30 = [wnids.index(w) for w in constants.IMAGENET30_WNIDS]
  out = {}
  for split, wanted in (('train', [idx30[c]]), ('validation', idx30)):
    ds = tfds_io.load_tfds('imagenet2012', split, config, manual_dir=d.root, hint=(
        'ImageNet-1k needs a manual download: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar '
        '(image-net.org) in a directory and pass it as --config.data.root (tfds prepares it once into '
        '--config.data.tfds_data_dir), or pass the extracted train/<wnid>/, val/<wnid>/ folders as '
        '--config.data.root'))
    pos = {lab: k for k, lab in enumerate(idx30)}
    imgs, labs = [], []
    for ex in tfds.as_numpy(tfds_io.filter_labels(ds, wanted)):   # filtered in the tf.data graph, before decoding
      lab = int(ex['label'])
      img = transforms.to_rgb_or_gray(tfds_io.decode(ex['image']), 3)
      imgs.append(transforms.resize_shorter_crop(img, 256))
      labs.append(int(pos[lab] != c))
    if not imgs:
      raise ValueError(f'tfds imagenet2012 split {split!r} holds no image of the ImageNet-30 class(es) '
                       f'{[constants.IMAGENET30_WNIDS[pos[w]] for w in wanted][:3]}')
    out[split] = (np.stack(imgs), np.asarray(labs, np.int32))
  train, test, labels = out['train'][0], out['validation'][0], out['validation'][1]
  tmp = path + '.tmp.npz'
  np.savez(tmp, train=train, test=test, labels=labels)
  os.replace(tmp, path)
  return train, test, labels


def load(config):
  """ImageNet-30 source for class config.data.normal_class (spec §5.6)."""
  d = config.data
  c = checks.check_class(config, 30, constants.IMAGENET30_CLASSES)
  if d.root and not os.path.isdir(d.root):
    raise FileNotFoundError(f'config.data.root={d.root!r} is not a directory: ImageNet-30 needs ImageNet-1k '
                            '(train/<wnid>/ and val/<wnid>/ folders, or the ILSVRC2012 tars for tfds)')
  cache = image_io.cache_dir(d.root, d.cache_dir)
  if _folder_root(d.root):
    train, test, labels = _from_folders(config, c, cache)
  else:
    train, test, labels = _from_tfds(config, c, cache)
  t = transforms.Transform(mean=constants.IMAGENET_MEAN, std=constants.IMAGENET_STD, input_size=(224, 224),
                           raw_size=(256, 256), channels=3, train_geom='crop', test_center=True, hflip=True,
                           noise_std=0.001, jitter=(0.01,) * 4, resize='shorter')
  return source.Source(
      name='imagenet', class_names=constants.IMAGENET30_CLASSES, normal_class=c, transform=t, train_images=train,
      test_images=test, test_labels=labels, size_scale=256 / 240.0,
      oe_images=oe.load(config, 3, (256, 256), cache_dir=cache))
