"""Generators of small data trees and mocked tfds datasets shared by the data tests (not a test module).

Test files import these helpers from here, never from each other (issue 15, item 6).
"""
import gzip
import io
import os

import numpy as np
from PIL import Image

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'shared', 'data')
FMNIST_DEBIAN = '/usr/share/datasets/fashion-mnist'


def write_mvtec_tree(root, size=40, n_train=6, with_masks=True, gray=False):
  """An MVTec-layout category: n_train train/good images, 3 test/good and 3 test/crack images whose square
  [10:20, 5:15] is white, with ground_truth/crack/<name>_mask.png masks of that square (with_masks)."""
  rng = np.random.default_rng(0)
  def img():
    return rng.integers(60, 120, (size, size) if gray else (size, size, 3), dtype=np.uint8)
  os.makedirs(os.path.join(root, 'train', 'good'))
  for i in range(n_train):
    Image.fromarray(img()).save(os.path.join(root, 'train', 'good', f'{i:03d}.png'))
  for d in ('good', 'crack'):
    os.makedirs(os.path.join(root, 'test', d))
    for i in range(3):
      a = img()
      if d == 'crack':
        a[10:20, 5:15] = 255
        if with_masks:
          os.makedirs(os.path.join(root, 'ground_truth', d), exist_ok=True)
          m = np.zeros((size, size), np.uint8)
          m[10:20, 5:15] = 255
          Image.fromarray(m).save(os.path.join(root, 'ground_truth', d, f'{i:03d}_mask.png'))
      Image.fromarray(a).save(os.path.join(root, 'test', d, f'{i:03d}.png'))


def write_idx(path, arr):
  """An idx file (gzip) of unsigned bytes, the official MNIST/Fashion-MNIST format."""
  header = bytes([0, 0, 8, arr.ndim]) + b''.join(int(s).to_bytes(4, 'big') for s in arr.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + arr.astype(np.uint8).tobytes())


def write_fmnist_files(root, n_per_class=16, lo=0, hi=255):
  """The four Fashion-MNIST idx files with random images: n_per_class train and 2 test images per class."""
  rng = np.random.default_rng(0)
  write_idx(root / 'train-images-idx3-ubyte.gz', rng.integers(lo, hi, (10 * n_per_class, 28, 28)))
  write_idx(root / 'train-labels-idx1-ubyte.gz', np.repeat(np.arange(10), n_per_class))
  write_idx(root / 't10k-images-idx3-ubyte.gz', rng.integers(0, 255, (20, 28, 28)))
  write_idx(root / 't10k-labels-idx1-ubyte.gz', np.repeat(np.arange(10), 2))


def write_images(folder, arrays, ext='.png'):
  """Saves uint8 arrays as <folder>/000<ext>, 001<ext>, ..."""
  os.makedirs(folder, exist_ok=True)
  for i, a in enumerate(arrays):
    Image.fromarray(a).save(os.path.join(folder, f'{i:03d}{ext}'))


def png(arr):
  """PNG bytes of a uint8 array (an encoded tfds image)."""
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format='PNG')
  return buf.getvalue()


def mock_tfds(examples):
  """tfds.testing.mock_data whose datasets are `examples[(builder name, split)]`: lists of dicts holding an
  encoded 'image' and the other features (as the real datasets read with SkipDecoding)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  def as_dataset(self, split, *args, **kwargs):
    del args, kwargs
    exs = examples[(self.name, str(split))]

    def spec(v):
      if isinstance(v, dict):
        return {k: spec(x) for k, x in v.items()}
      if isinstance(v, bytes):
        return tf.TensorSpec((), tf.string)
      v = np.asarray(v)
      return tf.TensorSpec(v.shape if v.ndim == 0 else (None,), tf.int64)
    return tf.data.Dataset.from_generator(lambda: iter(exs), output_signature=spec(exs[0]))
  return tfds.testing.mock_data(as_dataset_fn=as_dataset)


def imagenet_folders(root, n_train=10, n_val=2, classes=range(30)):
  """ImageNet-1k class folders train/<wnid>/ and val/<wnid>/ of the ImageNet-30 synsets, random JPEGs."""
  from fcdd_jax.data import constants  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for k in classes:
    wnid = constants.IMAGENET30_WNIDS[k]
    write_images(os.path.join(root, 'train', wnid), rng.integers(0, 256, (n_train, 40, 60, 3), dtype=np.uint8),
                 '.JPEG')
    write_images(os.path.join(root, 'val', wnid), rng.integers(0, 256, (n_val, 60, 40, 3), dtype=np.uint8), '.JPEG')


BOTTLE = os.path.join(SHARED, 'mvtec_bottle_256', 'bottle')


def bottle_subset(root, counts):
  """The first n real bottle images of each sub folder ({'train/good': n, ...}) copied into `root` (MVTec
  layout): real images at a suite's budget. Returns root as str."""
  import shutil  # pylint: disable=g-import-not-at-top
  for sub, n in counts.items():
    os.makedirs(os.path.join(root, sub))
    for f in sorted(os.listdir(os.path.join(BOTTLE, sub)))[:n]:
      shutil.copy(os.path.join(BOTTLE, sub, f), os.path.join(root, sub, f))
  return str(root)


def tiny(c, tmp_path, **kv):
  """A paper config cut down to a 2-step run with a cache under tmp_path (dotted field overrides in kv)."""
  base = dict(num_train_steps=2, log_every_steps=1, checkpoint_every_steps=2, batch_size=8,
              **{'eval.num_figure_samples': 4, 'data.cache_dir': str(tmp_path / 'cache')})
  c.update_from_flattened_dict({**base, **kv})
  return c


def roc_area(workdir):
  """Trapezoid area under the image-level ROC a run wrote to roc.json (from (0, 0) to (1, 1)): a NumPy
  reference for results['image_auc'] on tiny runs whose AUC itself is arbitrary."""
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, 'roc.json')) as f:
    roc = json.load(f)
  fpr, tpr = np.asarray(roc['fpr'], np.float64), np.asarray(roc['tpr'], np.float64)
  assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1 and (np.diff(fpr) >= 0).all()
  return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
