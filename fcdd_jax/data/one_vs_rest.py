"""One-vs-rest datasets (spec §5.2) as a `Source`: Fashion-MNIST (idx files or tfds `fashion_mnist`) and
CIFAR-10 (`train/<class>/*`, `test/<class>/*` folders or tfds `cifar10`); the normal class is nominal, the
other nine anomalous."""
import os

import numpy as np

from fcdd_jax.data import checks
from fcdd_jax.data import constants
from fcdd_jax.data import image_io
from fcdd_jax.data import oe
from fcdd_jax.data import pollution
from fcdd_jax.data import source
from fcdd_jax.data import tfds_io
from fcdd_jax.data import transforms

FMNIST_DEFAULT_ROOT = '/usr/share/datasets/fashion-mnist'


def _find(root, stem):
  for ext in ('', '.gz'):
    p = os.path.join(root, stem + ext)
    if os.path.exists(p):
      return p
  raise FileNotFoundError(f'{os.path.join(root, stem)}(.gz) not found: Fashion-MNIST needs the four idx files '
                          '(Debian: apt-get install dataset-fashion-mnist -> /usr/share/datasets/fashion-mnist)')


def _one_vs_rest(config, name, tr_x, tr_y, te_x, te_y, names, table, channels, size):
  c = checks.check_class(config, len(names), names)
  d = config.data
  train, train_labels = tr_x[tr_y == c], None
  if d.supervise_mode == 'other' and not d.online_supervision:  # spec §6.1: the whole (imbalanced) train set
    train, train_labels = tr_x, (tr_y != c).astype(np.int32)
  labels = (te_y != c).astype(np.int32)
  polluted, record = None, None
  r = pollution.ratio_of(config)
  if r > 0 and train_labels is None:   # data.pollution: the other classes' training images, unlabelled
    polluted = pollution.pollute(train, tr_x[tr_y != c], r, seed=config.seed,
                                 what=f'training images of the other {name} classes')
    train = polluted.images
    record = dict(polluted.record(r), source='training images of the other classes')
  mn, mx, mean, std = table[c]
  pre = d.preproc
  geo = dict(input_size=size, raw_size=size, channels=channels)
  if pre == 'lcnaug1':
    t = transforms.Transform(kind='lcn', lcn_min=mn, lcn_max=mx, train_geom='crop_pad', crop_pad=2, hflip=True,
                             noise_std=0.0, **geo)
  elif pre == 'lcn':
    t = transforms.Transform(kind='lcn', lcn_min=mn, lcn_max=mx, train_geom='none', hflip=False, noise_std=0.0,
                             **geo)
  elif pre in ('aug1', 'aug1_blackcenter', 'aug1_blackcenter_inverted'):
    fm = name == 'fmnist'
    t = transforms.Transform(mean=mean, std=std, train_geom='crop_pad', crop_pad=3 if fm else 4, hflip=True,
                             noise_std=0.01 if fm else 0.001, jitter=(0.1,) * 4 if fm else (0.01,) * 4,
                             blackcenter={'aug1_blackcenter': 'center',
                                          'aug1_blackcenter_inverted': 'border'}.get(pre, ''), **geo)
  elif pre == 'none':
    t = transforms.Transform(mean=mean, std=std, train_geom='none', hflip=False, noise_std=0.0, **geo)
  else:
    raise AssertionError(pre)   # config_checks.check_data allows only checks.PREPROCS[name]
  # Online malformed_normal on FMNIST/CIFAR drops the generated map (spec §3.2): label loss.
  return source.Source(
      name=name, class_names=tuple(names), normal_class=c, transform=t, train_images=train, test_images=te_x,
      test_labels=labels, train_labels=train_labels, size_scale=size[0] / 240.0,
      train_is_anomaly=None if polluted is None else polluted.is_anomaly, pollution=record,
      oe_images=oe.load(config, channels, size, cache_dir=image_io.cache_dir('', d.cache_dir)))


def load_fmnist(config):
  """Fashion-MNIST one-vs-rest (spec §5.4): the official idx files in data.root (or the Debian package), else tfds."""
  root = config.data.root or (FMNIST_DEFAULT_ROOT if os.path.isdir(FMNIST_DEFAULT_ROOT) else '')
  if root:
    tr_x = image_io.read_idx(_find(root, 'train-images-idx3-ubyte'))
    tr_y = image_io.read_idx(_find(root, 'train-labels-idx1-ubyte')).astype(np.int64)
    te_x = image_io.read_idx(_find(root, 't10k-images-idx3-ubyte'))
    te_y = image_io.read_idx(_find(root, 't10k-labels-idx1-ubyte')).astype(np.int64)
    tr_x, te_x = tr_x[..., None], te_x[..., None]
  else:
    arrays = tfds_io.load_arrays('fashion_mnist', config)
    (tr_x, tr_y), (te_x, te_y) = arrays['train'], arrays['test']
  return _one_vs_rest(config, 'fmnist', tr_x, tr_y, te_x, te_y, constants.FMNIST_CLASSES,
                      constants.FMNIST, 1, (28, 28))


def cifar10_arrays(config):
  """{'train'|'test': (uint8 images [N,32,32,3], labels [N])} of CIFAR-10: `train/<class>/*`, `test/<class>/*`
  folders in data.root, else tfds `cifar10` (downloaded on first use)."""
  root = config.data.root
  names = constants.CIFAR10_CLASSES
  if not root:
    return tfds_io.load_arrays('cifar10', config)
  cache = image_io.cache_dir(root, config.data.cache_dir)
  out = {}
  for split in ('train', 'test'):
    xs, ys = [], []
    for k, nm in enumerate(names):
      folder = os.path.join(root, split, nm)
      if not os.path.isdir(folder):
        raise FileNotFoundError(f'{folder} is missing: CIFAR-10 folders need {split}/<class>/* for the classes '
                                + ', '.join(names))
      paths = image_io.require_images(image_io.list_images(folder), folder)
      imgs, _ = image_io.read_images(paths, 3, (32, 32), on_bad=config.data.on_bad_image, cache=cache)
      xs.append(imgs)
      ys.append(np.full(len(imgs), k))
    out[split] = (np.concatenate(xs), np.concatenate(ys))
  return out


def load_cifar10(config):
  """CIFAR-10 one-vs-rest (spec §5.5): `cifar10_arrays`."""
  out = cifar10_arrays(config)
  (tr_x, tr_y), (te_x, te_y) = out['train'], out['test']
  return _one_vs_rest(config, 'cifar10', tr_x, tr_y, te_x, te_y, constants.CIFAR10_CLASSES, constants.CIFAR10, 3,
                      (32, 32))
