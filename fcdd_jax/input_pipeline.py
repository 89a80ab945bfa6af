"""Input pipelines: deterministic global training stream, padded evaluation batches (spec §5, §6).

`create(config, process_index, process_count)` returns a `Pipeline`. The global training stream is a pure
function of (seed, step): epoch = step // steps_per_epoch picks a permutation of the (enlarged) training
set from (seed, epoch); global row i of step t draws every random choice (online anomaly replacement,
the anomaly, augmentation) from `np.random.default_rng([seed, t, i])`. Each process builds only its rows
[p*b, (p+1)*b) of every global batch, so the stream is the same for any number of devices or hosts and a
resumed run sees exactly the batches of an uninterrupted one. Every epoch sees every (enlarged) training
example once: steps_per_epoch = ceil(n / batch) and the last batch of an epoch, when partial, is padded to the
static batch shape with zero rows and carries `valid` (1 real, 0 padding; only such batches have the key),
which the losses and the BatchNorm statistics honour, as the reference keeps its last partial batch (spec
§7.1, §11.11). Batches are built by a thread pool ahead of time. Evaluation pads the last batch and marks
rows with `valid` instead of dropping examples.

Labels in batches: 0 = nominal ("concentrate"), 1 = anomalous ("push away"), spec §3.6.
"""
import concurrent.futures
import dataclasses
import json
import logging
import os
from typing import Any, Callable, Optional

import numpy as np

from fcdd_jax import demo_data
from fcdd_jax.data import anomalies

DATASETS = ('demo', 'custom', 'mvtec', 'fmnist', 'cifar10', 'imagenet', 'pascal_voc')
OE_MODES = ('folder', 'cifar100', 'emnist', 'imagenet', 'imagenet22k')  # data/oe.py
SUPERVISE_MODES = ('unsupervised', 'other', 'noise', 'malformed_normal', 'malformed_normal_gt')


@dataclasses.dataclass(frozen=True)
class Info:
  name: str
  image_shape: tuple            # (H, W, C) at net input
  num_classes: int
  class_names: tuple
  normal_class: int
  nominal_label: int
  num_train: int                # training examples per epoch (after enlarge)
  steps_per_epoch: int
  train_gtmaps: bool
  test_gtmaps: bool
  num_test: int
  preprocessing: dict = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------
# Preprocessing (per example, NumPy)

def to_rgb_or_gray(img, channels):
  """uint8 [H,W] / [H,W,1] / [H,W,3] / [H,W,4] -> [H,W,channels] (RGBA dropped to RGB, gray replicated)."""
  img = np.asarray(img)
  if img.ndim == 2:
    img = img[..., None]
  if img.shape[-1] == 4:
    img = img[..., :3]
  if channels == 3 and img.shape[-1] == 1:
    img = np.repeat(img, 3, -1)
  if channels == 1 and img.shape[-1] == 3:  # PIL "L": ITU-R 601-2 luma
    img = np.rint(img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
  return np.clip(img, 0, 255).astype(np.uint8)


def resize_u8(img, size, nearest=False):
  """PIL resize of a uint8 [H,W,C] image to (h, w): bilinear with antialiasing, or nearest."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w = size
  if img.shape[:2] == (h, w):
    return img
  ch = img.shape[-1]
  pil = Image.fromarray(img[..., 0] if ch == 1 else img)
  out = np.asarray(pil.resize((w, h), Image.NEAREST if nearest else Image.BILINEAR))
  return out.reshape(h, w, ch)


def resize_shorter_crop(img, n):
  """torchvision Resize(n) (shorter side to n, bilinear with antialiasing) then CenterCrop(n)."""
  h, w = img.shape[:2]
  if (h, w) != (n, n):
    nh, nw = (n, max(n, int(n * w / h))) if h <= w else (max(n, int(n * h / w)), n)
    img = resize_u8(img, (nh, nw))
  y0, x0 = (img.shape[0] - n) // 2, (img.shape[1] - n) // 2
  return img[y0:y0 + n, x0:x0 + n]


def channel_stats(images):
  """Per-channel mean and std over uint8 images on [0,1] values (spec §5.9)."""
  x = np.asarray(images, np.float64) / 255.0
  return x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))


def _gray(x):
  return x[..., :1] if x.shape[-1] == 1 else (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]


def color_jitter(img, brightness, contrast, saturation, hue, rng):
  """torchvision ColorJitter semantics on a uint8 [H,W,C] image: factors uniform in [max(0,1-x), 1+x]
  (hue shift uniform in [-h, h]), the four ops in random order, uint8 rounding after each op as the PIL
  path does. Approximation: PIL's ImageEnhance/HSV arithmetic is reproduced with NumPy/matplotlib formulas
  (differences of at most a few grey levels)."""
  x = img.astype(np.float32)
  ops = []
  if brightness:
    ops.append(('b', rng.uniform(max(0.0, 1 - brightness), 1 + brightness)))
  if contrast:
    ops.append(('c', rng.uniform(max(0.0, 1 - contrast), 1 + contrast)))
  if saturation:
    ops.append(('s', rng.uniform(max(0.0, 1 - saturation), 1 + saturation)))
  if hue:
    ops.append(('h', rng.uniform(-hue, hue)))
  for i in rng.permutation(len(ops)):
    kind, f = ops[i]
    if kind == 'b':
      x = x * f
    elif kind == 'c':
      x = _gray(x).mean() * (1 - f) + x * f
    elif kind == 's' and x.shape[-1] == 3:
      x = _gray(x) * (1 - f) + x * f
    elif kind == 'h' and x.shape[-1] == 3:
      from matplotlib import colors  # pylint: disable=g-import-not-at-top
      hsv = colors.rgb_to_hsv(np.clip(x, 0, 255) / 255.0)
      hsv[..., 0] = (hsv[..., 0] + f) % 1.0
      x = colors.hsv_to_rgb(hsv) * 255.0
    x = np.clip(np.rint(x), 0, 255)
  return x.astype(np.uint8)


def lcn(x):
  """'Local contrast normalisation' of the reference (spec §5.3): global per-image centring + L1 scaling."""
  x = x - x.mean()
  scale = np.abs(x).mean()
  return x / scale if scale > 0 else x


@dataclasses.dataclass
class Transform:
  """Geometry, augmentation and value normalisation of one dataset/preproc (spec §5.3-§5.9).

  kind='normalize': (x - mean) / std per channel; kind='lcn': LCN then (x - lcn_min) / (lcn_max - lcn_min).
  train_geom: 'none' | 'crop' (RandomCrop(input) from the raw image) | 'crop_pad' (RandomCrop(input,
  padding=crop_pad)) | 'mvtec' (random choice of a random crop or a nearest resize from the raw size, joint
  with the mask). Then the horizontal flip, the reference's ColorJitter (`jitter`, `color_jitter`: torchvision
  semantics, NumPy arithmetic), the MVTec noise, the +noise_std·N(0,1) noise and the value normalisation.
  The jitter runs after the crop (the reference jitters the whole image before RandomCrop: the contrast
  factor blends towards the mean of the crop instead of the whole image).
  """
  mean: Any = None
  std: Any = None
  kind: str = 'normalize'
  lcn_min: Any = None
  lcn_max: Any = None
  input_size: tuple = (32, 32)
  raw_size: tuple = (32, 32)
  channels: int = 3
  train_geom: str = 'none'
  crop_pad: int = 0
  hflip: bool = True
  noise_std: float = 0.001
  mvtec_noise: bool = False
  blackcenter: str = ''
  jitter: tuple = ()            # ColorJitter strengths, or a tuple of such tuples to choose from (MVTec)
  test_center: bool = False     # test geometry: centre crop of the raw image (else nearest resize)
  resize: str = 'bilinear'      # how new images of any size reach raw_size (prediction)

  def _values(self, x):
    if self.kind == 'lcn':
      x = lcn(x)
      lo, hi = np.asarray(self.lcn_min, np.float32), np.asarray(self.lcn_max, np.float32)
      return ((x - lo) / (hi - lo)).astype(np.float32)
    return ((x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)).astype(np.float32)

  def _test_geom(self, img, mask=None):
    if self.test_center and img.shape[0] >= self.input_size[0] and img.shape[1] >= self.input_size[1]:
      h, w = self.input_size
      y0, x0 = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
      return img[y0:y0 + h, x0:x0 + w], (None if mask is None else mask[y0:y0 + h, x0:x0 + w])
    if tuple(img.shape[:2]) != tuple(self.input_size):
      img = resize_u8(img, self.input_size, nearest=True)
      if mask is not None:
        mask = resize_u8((mask[..., None] > 0).astype(np.uint8), self.input_size, nearest=True)[..., 0]
    return img, mask

  def test_geometry(self, img):
    """uint8 image at the net's input size, as the test transform sees it (figures show this)."""
    return self._test_geom(img)[0]

  def test(self, img):
    img, _ = self._test_geom(img)
    return self._values(img.astype(np.float32) / 255.0)

  def test_mask(self, mask):
    return self._test_geom(np.zeros(tuple(mask.shape) + (1,), np.uint8), mask)[1].astype(np.float32)

  def train(self, img, mask, rng, geom=None):
    """Augmented float32 net input and mask for one uint8 image at raw size. `geom` overrides train_geom
    (the pipeline picks the branch of the 'mvtec' choice itself when it holds a separate input-size copy)."""
    h, w = self.input_size
    train_geom = geom or self.train_geom
    if train_geom == 'mvtec':
      if rng.random() < 0.5 and img.shape[0] >= h and img.shape[1] >= w:
        y0 = rng.integers(0, img.shape[0] - h + 1)
        x0 = rng.integers(0, img.shape[1] - w + 1)
        img = img[y0:y0 + h, x0:x0 + w]
        mask = None if mask is None else mask[y0:y0 + h, x0:x0 + w]
      else:
        img, mask = self._test_geom(img, mask)
    elif train_geom == 'crop':  # RandomCrop(input) from the raw image, no padding
      y0, x0 = rng.integers(0, img.shape[0] - h + 1), rng.integers(0, img.shape[1] - w + 1)
      img = img[y0:y0 + h, x0:x0 + w]
      mask = None if mask is None else mask[y0:y0 + h, x0:x0 + w]
    elif train_geom == 'crop_pad':
      p = self.crop_pad
      img = np.pad(img, ((p, p), (p, p), (0, 0)))
      mask = None if mask is None else np.pad(mask, ((p, p), (p, p)))
      y0, x0 = rng.integers(0, img.shape[0] - h + 1), rng.integers(0, img.shape[1] - w + 1)
      img = img[y0:y0 + h, x0:x0 + w]
      mask = None if mask is None else mask[y0:y0 + h, x0:x0 + w]
    else:
      img, mask = self._test_geom(img, mask)
    if self.hflip and rng.random() < 0.5:
      img = img[:, ::-1]
      mask = None if mask is None else mask[:, ::-1]
    if self.jitter:
      j = self.jitter
      if isinstance(j[0], (tuple, list)):
        j = j[rng.integers(len(j))]
      img = color_jitter(np.ascontiguousarray(img), *j, rng)
    x = img.astype(np.float32) / 255.0
    if self.mvtec_noise and rng.random() < 0.5:
      x = np.clip(x + rng.standard_normal(x.shape).astype(np.float32) * 0.1 * x.std(), 0, 1)
    if self.noise_std:
      x = x + self.noise_std * rng.standard_normal(x.shape).astype(np.float32)
    if self.blackcenter:
      o = int(0.4 * h * 0.5)
      if self.blackcenter == 'center':
        x[o:h - o, o:w - o] = 0
      else:
        keep = x[o:h - o, o:w - o].copy()
        x[:] = 0
        x[o:h - o, o:w - o] = keep
    x = self._values(x)
    return x, (None if mask is None else np.ascontiguousarray(mask, np.float32))

  def describe(self, dataset, normal_class):
    arr = lambda v: None if v is None else np.asarray(v, np.float64).reshape(-1).tolist()
    return {'dataset': dataset, 'normal_class': int(normal_class), 'channels': int(self.channels),
            'input_size': list(self.input_size), 'raw_size': list(self.raw_size), 'kind': self.kind,
            'mean': arr(self.mean), 'std': arr(self.std), 'lcn_min': arr(self.lcn_min),
            'lcn_max': arr(self.lcn_max), 'resize': self.resize, 'test_center': bool(self.test_center)}


def make_test_transform(preprocessing):
  """fn(uint8 image of any size, gray/RGB/RGBA) -> float32 [H,W,C] net input, from info.preprocessing."""
  if not preprocessing:
    raise ValueError('the run has no preprocessing description (preprocessing.json is empty)')
  p = preprocessing
  t = Transform(mean=p.get('mean'), std=p.get('std'), kind=p.get('kind', 'normalize'), lcn_min=p.get('lcn_min'),
                lcn_max=p.get('lcn_max'), input_size=tuple(p['input_size']),
                raw_size=tuple(p.get('raw_size') or p['input_size']), channels=int(p['channels']),
                test_center=bool(p.get('test_center', False)))
  def fn(img):
    img = to_rgb_or_gray(img, t.channels)
    if p.get('resize') == 'shorter':
      return t.test(resize_shorter_crop(img, t.raw_size[0]))
    return t.test(resize_u8(img, t.raw_size, nearest=p.get('resize') == 'nearest'))
  return fn


# ----------------------------------------------------------------------------------------------------
# Offline supervision (spec §6.3)

def offline_supervise(config, nominal, oe_images=None, size_scale=1.0):
  """Offline supervision: once at start-up, one anomaly per nominal image (anomaly i is generated from
  nominal i for malformed_normal(_gt) with the offline inversion rule; a fresh noise or OE image for noise),
  appended to the nominal set (balanced 50/50, fixed for all epochs). Every random choice comes from
  (seed, i), so all processes build the same set. Returns (images, labels, maps or None); maps only for
  malformed_normal_gt (changed pixels; the reference attaches them un-augmented, misaligned with random
  crops and flips — here they go through the same joint transform, spec §10.5)."""
  d = config.data
  n = len(nominal)
  anoms, maps = [], []
  for i in range(n):
    rng = np.random.default_rng([int(config.seed), 0x0FF, i])
    oe = None if oe_images is None else oe_images[int(rng.integers(len(oe_images)))]
    img, gt = anomalies.make_anomaly(d.supervise_mode, d.noise_mode, rng, nominal[i], oe_image=oe, offline=True,
                                     size_scale=size_scale)
    anoms.append(img)
    maps.append(gt)
  images = np.concatenate([np.asarray(nominal), np.stack(anoms).astype(np.uint8)])
  labels = np.concatenate([np.zeros(n, np.int32), np.ones(n, np.int32)])
  gtmaps = None
  if d.supervise_mode == 'malformed_normal_gt':
    gtmaps = np.concatenate([np.zeros((n,) + images.shape[1:3], np.float32), np.stack(maps)])
  return images, labels, gtmaps


# ----------------------------------------------------------------------------------------------------
# The pipeline over in-memory uint8 arrays

class Pipeline:
  """Training stream and evaluation batches over decoded uint8 arrays at raw (= input) resolution."""

  def __init__(self, config, info, train_images, test_images, test_labels, test_masks, transform,
               process_index=0, process_count=1, test_masks_original=None, size_scale=1.0, oe_images=None,
               oe_masks=None, train_labels=None, train_images_input=None, train_original_sizes=None,
               train_resize=''):
    """train_images_input: optional copies of the training images resized straight to the input size (the
    'resize' branch of the 'mvtec' geometry then takes them instead of resizing the raw copy a second time,
    spec §5.9). train_original_sizes [N,2] and train_resize ('shorter' | 'nearest' | 'bilinear', how the
    stored images were made from the originals): malformed_normal(_gt) then draws synthetic noise at the
    original resolution (anomalies.Resampling), as the reference's custom runner does."""
    self.config = config
    self.train_images = train_images
    self.train_images_input = train_images_input
    self.train_original_sizes = (None if train_original_sizes is None
                                 else np.asarray(train_original_sizes, np.int64).reshape(-1, 2))
    self.train_resize = train_resize
    # Fixed training labels (0 nominal, 1 anomalous; before nominal_label) and maps: labelled anomalies
    # (`other`) or offline supervision; None = nominal-only images with online replacement (spec §6.3).
    self.train_labels = None if train_labels is None else np.asarray(train_labels, np.int32)
    self.train_maps = None
    if not config.data.online_supervision and config.data.supervise_mode in (
        'noise', 'malformed_normal', 'malformed_normal_gt'):
      self.train_images, self.train_labels, self.train_maps = offline_supervise(
          config, train_images, oe_images, size_scale)
      oe_images = None
    if self.train_labels is not None:
      n = len(self.train_images)
      info = dataclasses.replace(info, num_train=n * max(1, int(config.data.enlarge)),
                                 train_gtmaps=info.train_gtmaps or self.train_maps is not None,
                                 steps_per_epoch=_steps_per_epoch(n, config.data.enlarge, config.batch_size))
    self.info = info
    self.test_images = test_images
    self.test_labels = np.asarray(test_labels, np.int32)
    self.test_masks = test_masks
    self._masks_orig = test_masks_original
    self.transform = transform
    self.oe_images = oe_images
    self.oe_masks = oe_masks
    self.flip_labels = int(info.nominal_label) == 1   # spec §3.6: nominal class is pushed away
    if self.flip_labels:
      self.test_labels = 1 - self.test_labels
    self.process_index = process_index
    self.process_count = process_count
    self.size_scale = size_scale
    d = config.data
    self.seed = int(config.seed)
    self.supervise_mode = d.supervise_mode
    self.noise_mode = d.noise_mode
    self.enlarge = max(1, int(d.enlarge))
    self.batch_size = int(config.batch_size)
    if self.batch_size % process_count:
      raise ValueError(f'config.batch_size={self.batch_size} is not divisible by the {process_count} processes')
    self.local_batch = self.batch_size // process_count
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))

  # -- training -------------------------------------------------------------------------------------

  def _epoch_order(self, epoch):
    n = len(self.train_images)
    idx = np.tile(np.arange(n), self.enlarge)
    rng = np.random.default_rng([self.seed, 0x5EED, epoch])
    return idx[rng.permutation(len(idx))]

  def _example(self, step, row, src_index):
    """Global row `row` of global step `step` (0-based): (image, label, gtmap)."""
    rng = np.random.default_rng([self.seed, step, row])
    img = self.train_images[src_index]
    geom = None
    if self.train_images_input is not None and self.transform.train_geom == 'mvtec':
      # spec §5.9 (maps): RandomChoice{Resize(raw, NEAREST) -> RandomCrop(input), Resize(input, NEAREST)}, both
      # from the original; the branch is chosen first so that an anomaly is made on the copy it uses
      if rng.random() < 0.5:
        geom = 'crop'
      else:
        img, geom = self.train_images_input[src_index], 'none'
    h, w = img.shape[:2]
    gt = np.zeros((h, w), np.float32)
    label = 0
    mode = self.supervise_mode
    if self.train_labels is not None:       # fixed labels: `other` or offline supervision
      label = int(self.train_labels[src_index])
      gt = self.train_maps[src_index] if self.train_maps is not None else np.full((h, w), label, np.float32)
    elif mode in ('noise', 'malformed_normal', 'malformed_normal_gt'):
      if self.config.data.exact_half:
        anomalous = (row % 2) == 1
      else:
        anomalous = rng.random() < 0.5          # independent Bernoulli(0.5) per sample (spec §6.3)
      if anomalous:
        oe = oe_mask = None
        if self.oe_images is not None:
          k = rng.integers(len(self.oe_images))
          oe = self.oe_images[k]
          if self.oe_masks is not None and self.noise_mode == 'mvtec_gt':
            oe_mask = self.oe_masks[k]
        res = None
        if (self.train_original_sizes is not None and oe is None and mode != 'noise'
            and self.noise_mode in anomalies.NOISE_MODES):
          res = anomalies.resampling(tuple(self.train_original_sizes[src_index]), self.train_resize, (h, w))
        img, gt = anomalies.make_anomaly(mode, self.noise_mode, rng, img, oe_image=oe, oe_mask=oe_mask,
                                         size_scale=self.size_scale, resampling=res)
        label = 1
    if self.flip_labels:
      label = 1 - label
    x, gt = self.transform.train(img, gt, rng, geom)
    return x, label, np.ascontiguousarray(gt, np.float32)

  def _build_train_batch(self, step):
    spe = self.info.steps_per_epoch
    epoch, k = divmod(step, spe)
    order = self._epoch_order(epoch)
    rows = range(self.process_index * self.local_batch, (self.process_index + 1) * self.local_batch)
    xs, ys, gs, valid = [], [], [], []
    for row in rows:
      i = k * self.batch_size + row
      if i < len(order):
        x, y, g = self._example(step, row, order[i])
      else:   # padding of the epoch's last, partial batch: zeros, ignored by the loss and BatchNorm
        x = np.zeros(tuple(self.info.image_shape), np.float32)
        y, g = 0, np.zeros(tuple(self.info.image_shape[:2]), np.float32)
      xs.append(x)
      ys.append(y)
      gs.append(g)
      valid.append(i < len(order))
    batch = {'image': np.stack(xs), 'label': np.asarray(ys, np.int32)}
    if self.info.train_gtmaps:
      batch['gtmap'] = np.stack(gs)
    if (k + 1) * self.batch_size > len(order):   # decided globally: every process adds the key
      batch['valid'] = np.asarray(valid, np.float32)
    return batch

  def global_train_batch(self, step):
    """The whole global batch of `step` (testing aid; each process normally builds only its slice)."""
    saved = self.process_index, self.local_batch
    self.process_index, self.local_batch = 0, self.batch_size
    try:
      return self._build_train_batch(step)
    finally:
      self.process_index, self.local_batch = saved

  def train_batches(self, start_step=0, prefetch=4):
    """Infinite iterator of local training batches for steps start_step, start_step+1, ... (0-based)."""
    futures = []
    step = int(start_step)
    while True:
      while len(futures) < prefetch:
        futures.append(self._pool.submit(self._build_train_batch, step))
        step += 1
      yield futures.pop(0).result()

  # -- evaluation -----------------------------------------------------------------------------------

  def _split(self, split):
    if split == 'test':
      return self.test_images, self.test_labels, self.test_masks
    if split == 'train':
      n = len(self.train_images)
      labels = np.zeros(n, np.int32) if self.train_labels is None else self.train_labels
      return self.train_images, labels, None
    raise ValueError(f"split={split!r}; allowed: 'test', 'train'")

  def num_eval_batches(self, split='test', batch_size=None):
    gb = int(batch_size or self.config.eval.batch_size or self.batch_size)
    return -(-len(self._split(split)[0]) // gb)

  def eval_batches(self, split='test', batch_size=None):
    images, labels, masks = self._split(split)
    gb = int(batch_size or self.config.eval.batch_size or self.batch_size)
    if gb % self.process_count:
      raise ValueError(f'eval batch size {gb} is not divisible by the {self.process_count} processes')
    lb = gb // self.process_count
    n = len(images)
    num_batches = -(-n // gb)
    def build(b):
      rows = np.arange(b * gb + self.process_index * lb, b * gb + (self.process_index + 1) * lb)
      valid = rows < n
      src = np.where(valid, rows, 0)
      batch = {
          'image': np.stack([self.transform.test(images[i]) for i in src]),
          'label': np.where(valid, labels[src], 0).astype(np.int32),
          'valid': valid.astype(np.float32),
          'index': np.where(valid, rows, -1).astype(np.int32),
      }
      if masks is not None and self.info.test_gtmaps:
        batch['gtmap'] = np.stack([self.transform.test_mask(masks[i]) for i in src]) * valid[:, None, None]
      return batch
    futures = [self._pool.submit(build, b) for b in range(min(num_batches, 4))]
    for b in range(num_batches):
      out = futures.pop(0).result()
      if b + 4 < num_batches:
        futures.append(self._pool.submit(build, b + 4))
      yield out

  def test_masks_original(self):
    if not self.info.test_gtmaps:
      return None
    if self._masks_orig is not None:
      return self._masks_orig
    return [np.asarray(m, np.uint8) for m in self.test_masks]

  def display_images(self, split, indices):
    """RGB uint8 images at the net's input size (the test geometry), aligned with the heatmaps."""
    images = self._split(split)[0]
    return np.stack([to_rgb_or_gray(self.transform.test_geometry(images[i]), 3) for i in indices])

  def write_preview(self, path, per_label=20):
    """ds_preview.png (spec §8.3): augmented training samples per label, with their maps."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    batch = self.global_train_batch(0)
    x, y = batch['image'], batch['label']
    real = batch['valid'] > 0 if 'valid' in batch else np.ones(len(y), bool)
    rows = []
    for lab in (0, 1):
      sel = np.flatnonzero((y == lab) & real)[:per_label]
      if not len(sel):
        continue
      ims = []
      for i in sel:
        im = x[i]
        im = (im - im.min()) / max(float(im.max() - im.min()), 1e-8)
        im = np.repeat(im, 3, -1) if im.shape[-1] == 1 else im
        ims.append((im * 255).astype(np.uint8))
      rows.append(np.concatenate(ims, 1))
      if 'gtmap' in batch:
        rows.append(np.concatenate([np.repeat((batch['gtmap'][i][..., None] * 255).astype(np.uint8), 3, -1)
                                    for i in sel], 1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    grid = np.concatenate(rows, 0)
    scale = max(1, 256 // grid.shape[0])
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)


# ----------------------------------------------------------------------------------------------------
# Sources

def _check_common(config):
  d = config.data
  if d.name not in DATASETS:
    raise ValueError(f'config.data.name={d.name!r} is unknown; known datasets: {", ".join(DATASETS)}')
  if d.supervise_mode not in SUPERVISE_MODES:
    raise ValueError(f'config.data.supervise_mode={d.supervise_mode!r} is unknown; allowed: '
                     + ', '.join(SUPERVISE_MODES))
  generates = d.supervise_mode in ('noise', 'malformed_normal', 'malformed_normal_gt')
  modes = anomalies.NOISE_MODES + OE_MODES + (('mvtec', 'mvtec_gt') if d.name in ('mvtec', 'custom') else ())
  if generates and d.noise_mode not in modes:
    raise ValueError(f'config.data.noise_mode={d.noise_mode!r} is not available for {d.name}; allowed: '
                     + ', '.join(modes))
  if generates and d.noise_mode == 'folder' and not d.oe_root:
    raise ValueError('config.data.noise_mode=folder needs --config.data.oe_root=<image folder>')
  if not d.online_supervision:  # spec §6.3: where the reference supports offline supervision
    if d.name in ('imagenet', 'pascal_voc') and d.supervise_mode != 'unsupervised':
      raise ValueError(f'config.data.online_supervision=False is not available for {d.name} with supervise_mode='
                       f'{d.supervise_mode!r} (spec §6.3: only unsupervised); use online supervision')
    if d.name == 'custom':
      raise ValueError('config.data.online_supervision=False is not available for custom data (spec §6.3); use '
                       'online supervision')
    if generates and d.noise_mode in ('mvtec', 'mvtec_gt'):
      raise ValueError(f'config.data.online_supervision=False is not available with noise_mode={d.noise_mode!r} '
                       '(spec §6.3); use online supervision')


def _steps_per_epoch(num_train, enlarge, batch_size):
  """ceil(n * enlarge / batch): the last partial batch of an epoch is kept (padded, spec §7.1, §11.11)."""
  return -(-(num_train * max(1, enlarge)) // batch_size)


def _train_gtmaps(config, has_test_masks):
  """GT-map loss (spec §3.2) on the demo: malformed_normal(_gt) with its generated maps (the demo has masks).
  Reference datasets decide in their own source: MVTec and custom data with maps always, others never."""
  return config.data.supervise_mode in ('malformed_normal', 'malformed_normal_gt') and has_test_masks


def _demo(config, process_index, process_count):
  d = config.data
  data = demo_data.make_demo(seed=config.seed, num_train=d.demo_num_train, num_test=d.demo_num_test,
                             size=d.demo_image_size)
  train = data['train_images']
  mean, std = channel_stats(train)
  size = d.demo_image_size
  transform = Transform(mean.astype(np.float32), std.astype(np.float32), input_size=(size, size),
                        raw_size=(size, size), channels=3)
  if d.normal_class != 0:
    raise ValueError(f'config.data.normal_class={d.normal_class} is out of range for the demo (1 class: 0)')
  n_train = len(train)
  info = Info(name='demo', image_shape=(size, size, 3), num_classes=1, class_names=('texture',),
              normal_class=0, nominal_label=0, num_train=n_train * max(1, d.enlarge),
              steps_per_epoch=_steps_per_epoch(n_train, d.enlarge, config.batch_size),
              train_gtmaps=_train_gtmaps(config, True), test_gtmaps=True, num_test=len(data['test_images']),
              preprocessing=transform.describe('demo', 0))
  return Pipeline(config, info, train, data['test_images'], data['test_labels'], data['test_masks'], transform,
                  process_index, process_count, size_scale=size / 240.0)


def create(config, process_index=0, process_count=1):
  """Builds the pipeline for config.data.name (see DATASETS)."""
  _check_common(config)
  name = config.data.name
  if name == 'demo':
    return _demo(config, process_index, process_count)
  from fcdd_jax.data import sources  # pylint: disable=g-import-not-at-top
  return sources.create(config, process_index, process_count)
