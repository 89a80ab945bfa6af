"""ImageNet-30 one-vs-rest (spec §5.6) and the ImageNet-1k constants used by OE (spec §5.8, §6.2).

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

from fcdd_jax import input_pipeline as ip
from fcdd_jax.data import oe
from fcdd_jax.data import sources

IMAGENET30_CLASSES = (
    'acorn', 'airliner', 'ambulance', 'American alligator', 'banjo', 'barn', 'bikini', 'digital clock',
    'dragonfly', 'dumbbell', 'forklift', 'goblet', 'grand piano', 'hotdog', 'hourglass', 'manhole cover',
    'mosque', 'nail', 'parking meter', 'pillow', 'revolver', 'dial telephone', 'schooner', 'snowmobile',
    'soccer ball', 'stingray', 'strawberry', 'tank', 'toaster', 'volcano')
IMAGENET30_WNIDS = (
    'n12267677', 'n02690373', 'n02701002', 'n01698640', 'n02787622', 'n02793495', 'n02837789', 'n03196217',
    'n02268443', 'n03255030', 'n03384352', 'n03443371', 'n03452741', 'n07697537', 'n03544143', 'n03717622',
    'n03788195', 'n03804744', 'n03891332', 'n03938244', 'n04086273', 'n03187595', 'n04147183', 'n04252077',
    'n04254680', 'n01498041', 'n07745940', 'n04389033', 'n04442312', 'n09472597')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ImageNet-1k class indices (sorted-wnid order, as tfds/torchvision) excluded from ImageNet OE for Pascal
# VOC (spec §5.8): the reference splits each class-name string at spaces and commas and drops a class when
# a token equals one of its VOC words (person, bird, cat, cow, dog, horse, sheep, aeroplane, bicycle, boat,
# bus, car, motorbike, train, bottle, chair, table, plant, sofa, tv, monitor). Computed from the names:
# 14 indigo bird; 153 Maltese dog; 200 chrysanthemum dog; 230 Shetland sheep dog; 235 German shepherd dog;
# 238 Greater Swiss Mountain dog; 239 Bernese mountain dog; 248 Eskimo dog; 251 coach dog; 252 monkey dog;
# 256 Newfoundland dog; 275 hunting dog; 281-285 tabby/tiger/Persian/Siamese/Egyptian cat; 344 river horse;
# 349 bighorn sheep; 383 Madagascar cat; 387 bear cat; 423 barber chair; 436 estate car; 440 beer bottle;
# 444 tandem bicycle; 466 bullet train; 475 car mirror; 479 car wheel; 512 bottle screw; 532 dining table;
# 537 dog sled; 559 folding chair; 565 freight car; 603 horse cart; 664 monitor; 693 boat paddle;
# 705 passenger car; 720 pill bottle; 736 pool table; 737 soda bottle; 751 race car; 765 rocking chair;
# 779 school bus; 817 sport car; 829 trolley car; 846 table lamp; 864 tow car; 898 water bottle;
# 907 wine bottle; 934 hot dog; 990 horse chestnut.
VOC_EXCLUDED_IMAGENET1K = (
    14, 153, 200, 230, 235, 238, 239, 248, 251, 252, 256, 275, 281, 282, 283, 284, 285, 344, 349, 383, 387,
    423, 436, 440, 444, 466, 475, 479, 512, 532, 537, 559, 565, 603, 664, 693, 705, 720, 736, 737, 751, 765,
    779, 817, 829, 846, 864, 898, 907, 934, 990)


def imagenet1k_wnids():
  """The 1000 ImageNet-1k synset ids in class-index order (tfds's labels.txt, sorted wnids)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(tfds.__file__), 'datasets', 'imagenet2012', 'labels.txt')
  with open(path) as f:
    wnids = [line.strip() for line in f if line.strip()]
  assert len(wnids) == 1000 and wnids == sorted(wnids), path
  return wnids


def _folder_root(root):
  return bool(root) and all(os.path.isdir(os.path.join(root, s, IMAGENET30_WNIDS[0])) for s in ('train', 'val'))


def _from_folders(config, c, cache):
  d = config.data
  kw = dict(shorter=True, on_bad=d.on_bad_image, cache=cache)
  folder = os.path.join(d.root, 'train', IMAGENET30_WNIDS[c])
  train, _ = sources.read_images(sources._nonempty(sources.list_images(folder), folder), 3, (256, 256), **kw)  # pylint: disable=protected-access
  tests, labels = [], []
  for k, wnid in enumerate(IMAGENET30_WNIDS):
    folder = os.path.join(d.root, 'val', wnid)
    if not os.path.isdir(folder):
      raise FileNotFoundError(f'{folder} is missing: ImageNet-30 needs val/<wnid>/ for all 30 classes '
                              '(' + ', '.join(IMAGENET30_WNIDS) + ')')
    imgs, _ = sources.read_images(sources._nonempty(sources.list_images(folder), folder), 3, (256, 256), **kw)  # pylint: disable=protected-access
    tests.append(imgs)
    labels += [int(k != c)] * len(imgs)
  return train, np.concatenate(tests), np.asarray(labels, np.int32)


def _from_tfds(config, c, cache):
  """Nominal-class train images and the 30 classes' val images from tfds imagenet2012 (filtered on the
  encoded records: only the wanted images are decoded), cached as .npz."""
  import hashlib  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  d = config.data
  key = hashlib.sha1(repr(('in30', c, d.root, d.tfds_data_dir)).encode()).hexdigest()[:20]
  path = os.path.join(cache, f'imagenet30_{key}.npz')
  if os.path.exists(path):
    with np.load(path) as z:
      return z['train'], z['test'], z['labels']
  wnids = imagenet1k_wnids()
  idx30 = [wnids.index(w) for w in IMAGENET30_WNIDS]
  out = {}
  for split, wanted in (('train', [idx30[c]]), ('validation', idx30)):
    ds = oe.load_tfds('imagenet2012', split, config, manual_dir=d.root, hint=(
        'ImageNet-1k needs a manual download: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar '
        '(image-net.org) in a directory and pass it as --config.data.root (tfds prepares it once into '
        '--config.data.tfds_data_dir), or pass the extracted train/<wnid>/, val/<wnid>/ folders as '
        '--config.data.root'))
    pos = {lab: k for k, lab in enumerate(idx30)}
    imgs, labs = [], []
    for ex in tfds.as_numpy(oe.filter_labels(ds, wanted)):   # filtered in the tf.data graph, before decoding
      lab = int(ex['label'])
      img = ip.to_rgb_or_gray(oe.decode(ex['image']), 3)
      imgs.append(ip.resize_shorter_crop(img, 256))
      labs.append(int(pos[lab] != c))
    if not imgs:
      raise ValueError(f'tfds imagenet2012 split {split!r} holds no image of the ImageNet-30 class(es) '
                       f'{[IMAGENET30_WNIDS[pos[w]] for w in wanted][:3]}')
    out[split] = (np.stack(imgs), np.asarray(labs, np.int32))
  train, test, labels = out['train'][0], out['validation'][0], out['validation'][1]
  tmp = path + '.tmp.npz'
  np.savez(tmp, train=train, test=test, labels=labels)
  os.replace(tmp, path)
  return train, test, labels


def create(config, pi, pc):
  """ImageNet-30 pipeline for class config.data.normal_class (spec §5.6)."""
  d = config.data
  c = sources._check_class(config, 30, IMAGENET30_CLASSES)  # pylint: disable=protected-access
  if d.supervise_mode not in ('unsupervised', 'other', 'noise'):
    raise ValueError(f'config.data.supervise_mode={d.supervise_mode!r} is not available for imagenet (spec §5.6: '
                     'nominal images are not loaded when replaced); allowed: unsupervised, other, noise')
  if d.preproc != 'aug1':
    raise ValueError(f'config.data.preproc={d.preproc!r} is not available for imagenet; allowed: aug1 (the '
                     "reference's 'none' indexes the mean by class and is unusable, spec §10.5)")
  if d.root and not os.path.isdir(d.root):
    raise FileNotFoundError(f'config.data.root={d.root!r} is not a directory: ImageNet-30 needs ImageNet-1k '
                            '(train/<wnid>/ and val/<wnid>/ folders, or the ILSVRC2012 tars for tfds)')
  cache = sources._cache_dir(config, d.root)  # pylint: disable=protected-access
  if _folder_root(d.root):
    train, test, labels = _from_folders(config, c, cache)
  else:
    train, test, labels = _from_tfds(config, c, cache)
  t = ip.Transform(mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=(224, 224), raw_size=(256, 256), channels=3,
                   train_geom='crop', test_center=True, hflip=True, noise_std=0.001, jitter=(0.01,) * 4,
                   resize='shorter')
  info = sources._info(config, 'imagenet', (224, 224, 3), IMAGENET30_CLASSES, c, len(train), False, False,  # pylint: disable=protected-access
                       len(test), t)
  oe_images = oe.load(config, 3, (256, 256), cache_dir=cache)
  return ip.Pipeline(config, info, train, test, labels, None, t, pi, pc, size_scale=256 / 240.0,
                     oe_images=oe_images)
