"""tensorflow-datasets access shared by datasets and OE sources: loading with encoded images (decode only what
is kept), label filters in the tf.data graph, image decoding, whole small datasets as arrays, and the
ImageNet-1k class order. tensorflow / tensorflow_datasets are imported inside the functions: runs that never
touch tfds never import them."""
import os

import numpy as np

from fcdd_jax.utils import tf_setup


def load_tfds(name, split, config, *, manual_dir='', hint=''):
  """tf.data of a tfds split with encoded images (SkipDecoding: decode only what is kept, with `decode`);
  `data.tfds_data_dir` as data_dir and `manual_dir` for manual downloads. A dataset that cannot be loaded
  (not prepared, manual files missing, no network) is a FileNotFoundError ending with `hint`."""
  tf_setup.tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  kw = {'data_dir': config.data.tfds_data_dir} if config.data.tfds_data_dir else {}
  if manual_dir:
    kw['download_and_prepare_kwargs'] = {'download_config': tfds.download.DownloadConfig(manual_dir=manual_dir)}
  try:
    return tfds.load(name, split=split, decoders={'image': tfds.decode.SkipDecoding()}, **kw)
  except Exception as e:  # pylint: disable=broad-except  (tfds raises many kinds; say what to do)
    first = str(e).splitlines()[0] if str(e) else ''
    raise FileNotFoundError(f'cannot load tfds {name!r} split {split!r} ({type(e).__name__}: {first}). {hint}') from None


def filter_labels(ds, labels, keep=True):
  """tf.data filter on the integer 'label' of encoded examples: keep (or drop) the given labels. Runs in the
  tf.data graph, so records that are dropped are never decoded or copied to Python."""
  tf = tf_setup.tensorflow()
  labels = tf.constant(sorted(int(x) for x in labels) or [-1], tf.int64)
  def pred(ex):
    hit = tf.reduce_any(tf.equal(tf.cast(ex['label'], tf.int64), labels))
    return hit if keep else tf.logical_not(hit)
  return ds.filter(pred)


def decode(data):
  """Encoded image bytes (tfds SkipDecoding) or an already decoded array -> uint8 [H,W,C]."""
  if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim >= 2:
    return data if data.ndim == 3 else data[..., None]
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(bytes(data))) as im:
    arr = np.asarray(im.convert('L') if im.mode in ('1', 'I', 'I;16', 'F', 'L') else im.convert('RGB'))
  return arr[..., None] if arr.ndim == 2 else arr


def load_arrays(name, config):
  """train/test uint8 arrays of a tfds image-classification dataset (downloads on first use)."""
  tf_setup.tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  kw = {'data_dir': config.data.tfds_data_dir} if config.data.tfds_data_dir else {}
  out = {}
  for split in ('train', 'test'):
    ds = tfds.load(name, split=split, **kw).batch(1024)
    xs, ys = [], []
    for b in tfds.as_numpy(ds):
      xs.append(np.asarray(b['image'], np.uint8))
      ys.append(np.asarray(b['label'], np.int64))
    out[split] = (np.concatenate(xs), np.concatenate(ys))
  return out


def imagenet1k_wnids():
  """The 1000 ImageNet-1k synset ids in class-index order (tfds's labels.txt, sorted wnids)."""
  tf_setup.tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(tfds.__file__), 'datasets', 'imagenet2012', 'labels.txt')
  with open(path) as f:
    wnids = [line.strip() for line in f if line.strip()]
  assert len(wnids) == 1000 and wnids == sorted(wnids), path
  return wnids
