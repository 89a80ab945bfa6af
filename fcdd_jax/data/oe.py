"""Outlier Exposure sources (spec §6.2): images from another dataset used as training anomalies.

| noise_mode | source | notes |
|---|---|---|
| folder | any image folder (`data.oe_root`, recursive) | decoded once at the raw size, cached |
| cifar100 | tfds `cifar100` train (50,000), or a local folder copy in `data.oe_root` | Resize((h,w)), gray via PIL "L" |
| emnist | tfds `emnist/letters` train, transposed upright | Resize((h,w)) |
| imagenet | ImageNet-1k *val*: `data.oe_root` with `<wnid>/` (or `val/<wnid>/`) folders, or tfds `imagenet2012` validation (manual download: the tars in `data.oe_root`) | Resize((h,w)); class exclusion (Pascal VOC) |
| imagenet22k | ImageNet-22k fall11 class folders in `data.oe_root` minus the 30 ImageNet-30 synsets | Resize(shorter side) + centre crop; decoded lazily; unreadable files -> black |

`data.oe_limit` (> 0) keeps a fixed random subset of that many OE images per run (seeded by `config.seed`);
class exclusion is applied before the limit (the reference loses the exclusion when both are set, spec §10.5).
Every source returns an indexable of uint8 `[h, w, C]` images at the dataset's raw size: an array, a
memory-mapped array (large tfds sources, cached once), or `LazyImages` (ImageNet-22k: 14 M files).
"""
import hashlib
import logging
import os
import time

import numpy as np

from fcdd_jax.data import checks
from fcdd_jax.data import constants
from fcdd_jax.data import image_io
from fcdd_jax.data import streams
from fcdd_jax.data import tfds_io
from fcdd_jax.data import transforms
from fcdd_jax.utils import tf_setup

OE_MODES = checks.OE_MODES  # ('folder', 'cifar100', 'emnist', 'imagenet', 'imagenet22k')


def _say(msg):
  logging.info(msg)
  print(msg, flush=True)


def _limit_indices(n, limit, seed):
  """Sorted indices of the fixed per-run OE subset (all when limit <= 0 or >= n)."""
  if not limit or limit <= 0 or limit >= n:
    return np.arange(n)
  return np.sort(streams.rng(seed, 'oe_subset').choice(n, int(limit), replace=False))


class LazyImages:
  """Indexable of image files decoded on access to uint8 [h, w, channels] at `size` (ImageNet-22k OE).

  `how`: 'shorter' (Resize(shorter side) + centre crop) or 'squash' (Resize((h, w))). Unreadable files
  give a black image and a warning, as the reference's ImageNet-22k loader does."""

  def __init__(self, paths, channels, size, how='shorter'):
    self.paths = list(paths)
    self.channels = channels
    self.size = tuple(size)
    self.how = how

  def __len__(self):
    return len(self.paths)

  @property
  def shape(self):
    return (len(self.paths),) + self.size + (self.channels,)

  def __getitem__(self, k):
    p = self.paths[int(k)]
    try:
      img = transforms.to_rgb_or_gray(image_io.load_image(p), self.channels)
    except ValueError as e:
      logging.warning('%s (OE image replaced by a black image)', e)
      return np.zeros(self.size + (self.channels,), np.uint8)
    if self.how == 'shorter':
      return transforms.resize_shorter_crop(img, self.size[0])
    return transforms.resize_u8(img, self.size)


def _cache_file(cache_dir, *key):
  os.makedirs(cache_dir, exist_ok=True)
  h = hashlib.sha1(repr(key).encode()).hexdigest()[:20]
  return os.path.join(cache_dir, f'oe_{h}.npy')


def _tfds_images(name, split, config, channels, size, *, exclude=(), transform=None, manual_dir='',
                 cache_dir=''):
  """uint8 [N,h,w,C] of a tfds split resized to `size` (squash), without the labels in `exclude` and limited to
  the run's fixed `oe_limit` subset (chosen before decoding: only kept images are decoded).

  Streams into a .npy in `cache_dir` (memory-mapped afterwards), so ImageNet val never sits in RAM."""
  tf_setup.tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  d = config.data
  limit = int(d.oe_limit) if d.oe_limit and d.oe_limit > 0 else -1
  key = (name, split, channels, tuple(size), d.tfds_data_dir, manual_dir, tuple(sorted(exclude)), limit,
         int(config.seed) if limit > 0 else 0)
  path = _cache_file(cache_dir, *key)
  if os.path.exists(path):
    return np.load(path, mmap_mode='r')
  ds = tfds_io.load_tfds(name, split, config, manual_dir=manual_dir,
                 hint=f'Prepare it once with internet access (`tfds build {name}` / --config.data.tfds_data_dir), '
                      'or use a local folder: --config.data.oe_root=DIR')
  if exclude:
    ds = tfds_io.filter_labels(ds, exclude, keep=False)
  n = int(ds.reduce(np.int64(0), lambda count, _: count + 1))   # graph-only pass: no decoding
  if n == 0:
    raise ValueError(f'tfds {name!r} split {split!r} holds no usable OE image')
  keep = _limit_indices(n, limit, config.seed)
  pos = {int(i): j for j, i in enumerate(keep)}
  tmp = path + '.tmp.npy'
  arr = np.lib.format.open_memmap(tmp, mode='w+', dtype=np.uint8, shape=(len(keep),) + tuple(size) + (channels,))
  t0 = time.time()
  for i, ex in enumerate(tfds.as_numpy(ds)):
    j = pos.get(i)
    if j is None:
      continue
    img = tfds_io.decode(ex['image'])
    if transform is not None:
      img = transform(img)
    arr[j] = transforms.resize_u8(transforms.to_rgb_or_gray(img, channels), size)
    if j and j % 10000 == 0:
      _say(f'OE {name}/{split}: decoded {j}/{len(keep)} images ({time.time() - t0:.0f} s)')
  arr.flush()
  del arr
  os.replace(tmp, path)
  return np.load(path, mmap_mode='r')


def _wnid_folders(root):
  """The ImageNet class folder root inside `root` (`root` itself or `root/val`), or ''."""
  for cand in (root, os.path.join(root, 'val')):
    if os.path.isdir(cand) and any(n.startswith('n') and n[1:].isdigit() for n in os.listdir(cand)):
      return cand
  return ''


def _list_cached(root, cache_dir, what):
  """Recursive image file list of `root`, cached as a text file in `cache_dir` (listing ImageNet-22k's 14 M
  files takes many minutes; a new top-level entry in `root` invalidates the cache)."""
  st = os.stat(root)
  path = _cache_file(cache_dir, 'list', os.path.abspath(root), st.st_mtime_ns)[:-4] + '.txt'
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      return f.read().splitlines()
  _say(f'listing {what} files under {root} (cached afterwards in {path}) ...')
  paths = image_io.list_images(root)
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write('\n'.join(paths))
  os.replace(tmp, path)
  return paths


def load(config, channels, raw_size, *, exclude_1k=(), cache_dir=''):
  """The OE images of `config.data.noise_mode` at `raw_size`, or None when the mode uses no OE source."""
  d = config.data
  mode = d.noise_mode
  if d.supervise_mode not in checks.GENERATING_MODES or mode not in OE_MODES:
    return None
  size = tuple(raw_size)
  root = d.oe_root
  cache_dir = cache_dir or image_io.cache_dir('', d.cache_dir)
  if mode == 'folder' or (mode == 'cifar100' and root):
    if not root or not os.path.isdir(root):
      raise FileNotFoundError(f'config.data.oe_root={root!r} is not a directory (needed for noise_mode={mode})')
    paths = image_io.list_images(root)
    if not paths:
      raise ValueError(f'no images in config.data.oe_root={root!r} (extensions: {", ".join(image_io.IMG_EXT)})')
    paths = [paths[i] for i in _limit_indices(len(paths), d.oe_limit, config.seed)]
    imgs, _ = image_io.read_images(paths, channels, size, on_bad='skip', cache=cache_dir)
    return imgs
  if mode == 'cifar100':
    imgs = _tfds_images('cifar100', 'train', config, channels, size, cache_dir=cache_dir)
  elif mode == 'emnist':
    imgs = _tfds_images('emnist/letters', 'train', config, channels, size, cache_dir=cache_dir,
                        transform=lambda x: np.ascontiguousarray(np.swapaxes(x, 0, 1)))  # upright (spec §6.2)
  elif mode == 'imagenet':
    imgs = _imagenet_val(config, channels, size, exclude_1k, cache_dir)
  else:  # imagenet22k
    imgs = _imagenet22k(config, channels, size, cache_dir)
  if len(imgs) == 0:
    raise ValueError(f'noise_mode={mode}: the OE source has no images')
  return imgs  # tfds sources and LazyImages are already limited to the run's subset


def _imagenet_val(config, channels, size, exclude_1k, cache_dir):
  root = config.data.oe_root
  excluded = frozenset(int(i) for i in exclude_1k)
  folders = _wnid_folders(root) if root else ''
  if folders:
    wnids = {w: i for i, w in enumerate(tfds_io.imagenet1k_wnids())}
    paths = [p for p in _list_cached(folders, cache_dir, 'ImageNet-1k val')
             if wnids.get(os.path.basename(os.path.dirname(p)), -1) not in excluded]
    return LazyImages([paths[i] for i in _limit_indices(len(paths), config.data.oe_limit, config.seed)], channels,
                      size, how='squash')
  return _tfds_images('imagenet2012', 'validation', config, channels, size, exclude=excluded, manual_dir=root,
                      cache_dir=cache_dir)


def _imagenet22k(config, channels, size, cache_dir):
  root = config.data.oe_root
  if not root or not os.path.isdir(root):
    raise FileNotFoundError(
        f'config.data.oe_root={root!r} is not a directory: noise_mode=imagenet22k needs the ImageNet-22k '
        '(fall 2011) class folders extracted locally, e.g. --config.data.oe_root=/data/imagenet22k/'
        'fall11_whole_extracted (one folder per synset, n*/...JPEG); it cannot be downloaded automatically')
  paths = _list_cached(root, cache_dir, 'ImageNet-22k')
  paths = [p for p in paths if not any(w in p for w in constants.IMAGENET30_WNIDS)]  # spec §6.2: by substring
  if not paths:
    raise ValueError(f'no images in config.data.oe_root={root!r} outside the 30 ImageNet-30 synsets')
  return LazyImages([paths[i] for i in _limit_indices(len(paths), config.data.oe_limit, config.seed)], channels,
                    size, how='shorter')
