"""Image transforms as pure NumPy/Pillow functions: colour conversion, resizing, ColorJitter, LCN, and the
per-dataset `Transform` (train augmentation and test geometry, spec §5.3-§5.9).

A leaf module: it imports nothing from fcdd_jax, so image I/O, datasets, the pipeline, prediction and export
can all use it.
"""
import dataclasses
from typing import Any

import numpy as np


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


def channel_stats(images, chunk=4096):
  """Per-channel mean and std of [0,1] values over every pixel of uint8 images (spec §5.9): an array [N,H,W,C]
  (summed `chunk` images at a time) or a list of [H,W,C] images of any sizes (one at a time), in float64 sums,
  so no float copy of the whole set is made (50,000 CIFAR-10 images would take 1.2 GB as float64)."""
  parts = ((images[i:i + chunk] for i in range(0, len(images), chunk)) if isinstance(images, np.ndarray)
           else images)
  n, s, ss = 0, 0.0, 0.0
  for part in parts:
    x = np.asarray(part).reshape(-1, np.shape(part)[-1]).astype(np.float64) / 255.0
    n, s, ss = n + len(x), s + x.sum(0), ss + (x * x).sum(0)
  mean = s / n
  return mean, np.sqrt(np.maximum(ss / n - mean * mean, 0.0))


def _gray(x):
  return x[..., :1] if x.shape[-1] == 1 else (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]


# hsv_to_rgb's sextant i = 0..5 (and 6: no saturation, grey) -> which of (v, q, p, t) each channel takes
_HUE_R = np.array([0, 1, 2, 2, 3, 0, 0])
_HUE_G = np.array([3, 0, 0, 1, 2, 2, 0])
_HUE_B = np.array([2, 2, 3, 0, 0, 1, 0])


def hue_shift(x, f):
  """float32 RGB [..., 3] in [0, 255] -> its hue turned by f turns, × 255: matplotlib's
  `hsv_to_rgb(rgb_to_hsv(clip(x) / 255) with hue (h + f) % 1) * 255`, the same float32/float64 arithmetic
  element by element (bit for bit), on contiguous planes without its masked assignments (~3× faster: the
  hue shift was most of the augmentation's CPU time)."""
  shape = x.shape
  a = np.clip(x.reshape(-1, 3), 0, 255) / 255.0
  r, g, b = np.ascontiguousarray(a.T)
  v = np.maximum(np.maximum(r, g), b)
  delta = v - np.minimum(np.minimum(r, g), b)
  s = np.divide(delta, v, out=np.zeros_like(delta), where=v > 0)
  pos = delta > 0
  d = np.where(pos, delta, np.float32(1))
  h = np.where(b == v, 4. + (r - g) / d, np.where(g == v, 2. + (b - r) / d, (g - b) / d))  # blue, green win ties
  h[~pos] = 0
  h = (h / 6.0) % 1.0
  h = ((h + f) % 1.0).astype(a.dtype)
  h6 = h * 6.0
  i = h6.astype(np.int64)
  fr = h6 - i                                   # float64, as in matplotlib
  vals = np.empty((4,) + v.shape, a.dtype)      # v, q, p, t (q and t rounded to float32 on assignment)
  vals[0] = v
  vals[1] = v * (1.0 - s * fr)
  vals[2] = v * (1.0 - s)
  vals[3] = v * (1.0 - s * (1.0 - fr))
  sextant = i % 6
  sextant[s == 0] = 6
  n = np.arange(v.size)
  out = np.empty_like(a)
  for c, table in enumerate((_HUE_R, _HUE_G, _HUE_B)):
    out[:, c] = vals[table[sextant], n]
  return (out * 255.0).reshape(shape)


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
      x = hue_shift(x, f)
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
  orientation: str = ''         # data.orientation: '' | 'flips' (+ vertical flips) | 'rot90' (all 8 of the square)
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

  def normalize(self, img):
    """float32 net input of a uint8 image (or window) of any size: the value normalisation alone, no geometry
    (patch-trained runs score whole images; mean/std is per pixel, so a window normalises like its image)."""
    return self._values(np.asarray(img, np.float32) / 255.0)

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
    if self.orientation:   # only drawn when set: the reference's random streams are unchanged without it
      img, mask = orient(img, mask, self.orientation, rng)
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


ORIENTATIONS = ('', 'flips', 'rot90')


def orient(img, mask, orientation, rng):
  """`data.orientation` (parts that may lie at any orientation): 'flips' flips vertically with p 1/2 (with
  the horizontal flip: the 4 flips), 'rot90' also rotates by k·90°, k uniform in 0-3 (with the flips: all 8
  orientations of the square; needs a square input). The mask moves with the image."""
  if orientation not in ORIENTATIONS[1:]:
    raise ValueError(f'orientation={orientation!r}; expected one of {ORIENTATIONS[1:]}')
  if rng.random() < 0.5:
    img = img[::-1]
    mask = None if mask is None else mask[::-1]
  if orientation == 'rot90':
    k = int(rng.integers(4))
    img = np.rot90(img, k, axes=(0, 1))
    mask = None if mask is None else np.rot90(mask, k, axes=(0, 1))
  return img, mask


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
