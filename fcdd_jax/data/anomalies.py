"""Synthetic anomalies (spec §6): confetti and the other noise modes, malformed_normal(_gt).

Pure NumPy on ONE uint8 [H,W,C] image with an explicit np.random.Generator, so the input pipeline can seed
every example statelessly. Sizes are in pixels at the resolution the noise is drawn at (spec); `size_scale`
shrinks them for small images (e.g. the 32x32 demo: 32/240).

Noise at the original resolution (the reference's custom runner, spec §5.9/§6.4): for malformed_normal the
reference adds the noise to the ORIGINAL image and resizes afterwards, so on large originals confetti is many
small, sharp specks. Images here are stored resized; `Resampling` draws the noise at the original size and
maps it to the stored grid with the very weights of the resize that made the stored image (PIL's own,
read off by resizing identity matrices), the confetti blur folded into the same separable matrices. Resizing
is linear, so stored image + resampled noise equals the resize of (original + noise) up to the clamp to
[0, 255] and uint8 rounding; for nearest resizes it is exact.

CutPaste (noise modes cutpaste / cutpaste_scar / cutpaste_mixed, `data/cutpaste.py`) is not an additive
noise; `make_anomaly` dispatches to it, with the exact pasted region as the GT map of malformed_normal_gt.
"""
import functools

import numpy as np
from scipy import ndimage
from scipy import sparse

from fcdd_jax.data import cutpaste
from fcdd_jax.data import selfpaste

NOISE_MODES = ('confetti', 'confetti_pm', 'gaussian', 'uniform', 'solid', 'blob', 'mixed_blob')   # additive
CONFETTI_MODES = ('confetti', 'confetti_pm')
PASTE_MODES = cutpaste.CUTPASTE_MODES + selfpaste.SELFPASTE_MODES   # the image's own content moved: exact maps
SYNTHETIC_MODES = NOISE_MODES + PASTE_MODES   # every noise_mode generated without OE images


def _centres(rng, h, w, p, at_least_one=True):
  """Blob centres as the reference draws them: every pixel independently with probability p (a Bernoulli
  mask, so no pixel is a centre twice); with at_least_one a draw without any centre is redrawn as a whole
  (the reference's `ensureblob`). The count is Binomial(h*w, p) and, given the count, the centres are
  distinct pixels uniformly at random: the same law as the mask, without drawing h*w numbers."""
  n = int(rng.binomial(h * w, p))
  while n == 0 and at_least_one:
    n = int(rng.binomial(h * w, p))
  flat = rng.choice(h * w, size=n, replace=False) if n else np.zeros(0, np.int64)
  return flat // w, flat % w


def _stamp(h, w, cy, cx, side, angle_deg):
  """Boolean mask of a square of `side` centred at (cy, cx) (spec offsets), rotated by angle (nearest)."""
  lo = -(side // 2) if side % 2 else -side // 2 + 1
  hi = side // 2
  ext = int(np.ceil(0.75 * side)) + 1
  y0, y1 = max(0, cy - ext), min(h, cy + ext + 1)
  x0, x1 = max(0, cx - ext), min(w, cx + ext + 1)
  yy, xx = np.mgrid[y0:y1, x0:x1]
  t = np.deg2rad(angle_deg)
  # inverse-rotate the window coordinates about the centre (nearest neighbour), test membership
  dy, dx = yy - cy, xx - cx
  ry = np.rint(np.cos(t) * dy - np.sin(t) * dx)
  rx = np.rint(np.sin(t) * dy + np.cos(t) * dx)
  inside = (ry >= lo) & (ry <= hi) & (rx >= lo) & (rx <= hi)
  return (y0, y1, x0, x1), inside


def _blob_map(rng, shape_hwc, p, sides, value_fn, rotate=True):
  h, w, c = shape_hwc
  out = np.zeros((h, w, c), np.int16)   # values within +-256: int16 keeps large originals small
  cys, cxs = _centres(rng, h, w, p)
  side_of = rng.choice(sides, size=len(cys))
  colours = {}
  for cy, cx, side in zip(cys, cxs, side_of):
    if side not in colours:          # one colour per blob-size group (spec §6.2 quirk)
      colours[side] = value_fn(c)
    angle = rng.uniform(-45.0, 45.0) if rotate else 0.0
    (y0, y1, x0, x1), inside = _stamp(h, w, int(cy), int(cx), int(side), angle)
    region = out[y0:y1, x0:x1]
    region[inside] = colours[side]
  return out


def _scaled_sides(lo, hi, size_scale):
  lo2 = max(2, int(round(lo * size_scale)))
  hi2 = max(lo2, int(round(hi * size_scale)))
  return np.arange(lo2, hi2 + 1)


def _blur(x, size_scale):
  sigma = 5.0 * size_scale
  radius = max(1, int(round(12 * size_scale)))
  out = np.empty(x.shape, np.float64)
  for ch in range(x.shape[-1]):
    out[..., ch] = ndimage.gaussian_filter(x[..., ch].astype(np.float64), sigma, mode='mirror',
                                           truncate=radius / max(sigma, 1e-6))
  return out


def _confetti_layer(rng, shape_hwc, size_scale=1.0, signed=False):
  """The unblurred confetti map (coloured + gray rotated squares), int16: values <= 0 (the reference), or
  with `signed` each colour group (one per blob size, spec §6.2) darkens or brightens with probability 1/2."""
  h, w, c = shape_hwc
  sides = _scaled_sides(8, 54, size_scale)
  sign = (lambda: int(rng.choice((-1, 1)))) if signed else (lambda: 1)   # unsigned: the reference's draws
  coloured = _blob_map(rng, (h, w, c), 0.000018, sides, lambda ch: sign() * rng.integers(-256, 0, ch))
  coloured += _blob_map(rng, (h, w, c), 0.000012, sides, lambda ch: np.full(ch, -255 * sign()))  # |.| <= 511
  return coloured


def confetti(rng, shape_hwc, *, size_scale=1.0, signed=False):
  """Confetti noise (spec §6.2; MVTec default): coloured + gray rotated squares, blurred; values <= 0.
  `signed` (noise_mode `confetti_pm`): each colour group darkens or brightens. Dark-only confetti teaches a
  net trained on its pixel maps that dark means anomalous: it then lights up shadows, dark parts of the
  object and vignetted corners of nominal images (bench/README.md, "Panel")."""
  return _blur(_confetti_layer(rng, shape_hwc, size_scale, signed), size_scale).astype(np.int32)


def noise(mode, rng, shape_hwc, *, size_scale=1.0):
  h, w, c = shape_hwc
  if mode in CONFETTI_MODES:
    return confetti(rng, shape_hwc, size_scale=size_scale, signed=mode == 'confetti_pm')
  if mode == 'gaussian':
    return (rng.standard_normal((h, w, c)) * 64).astype(np.float32)
  if mode == 'uniform':
    return (rng.random((h, w, c)) * 255).astype(np.float32)
  if mode == 'solid':
    return np.broadcast_to(rng.integers(0, 256, c), (h, w, c)).astype(np.int32)
  if mode == 'blob':
    side = max(2, int(round(6 * size_scale)))
    return _blob_map(rng, shape_hwc, 0.002, np.array([side]), lambda ch: np.full(ch, 255), rotate=False)
  if mode == 'mixed_blob':
    side = max(2, int(round(34 * size_scale)))
    a = _blob_map(rng, shape_hwc, 1e-5, np.array([side]), lambda ch: np.full(ch, 255), rotate=False)
    a = np.where(a > 0, rng.integers(0, 256, a.shape), 0)
    b = _blob_map(rng, shape_hwc, 1e-5, np.array([side]), lambda ch: np.full(ch, 255), rotate=False)
    return (a + b).astype(np.int32)
  if mode in PASTE_MODES:
    raise ValueError(f'noise_mode={mode!r} is not an additive noise; make_anomaly (data/cutpaste.py, '
                     'data/selfpaste.py) makes it')
  raise ValueError(f'noise_mode={mode!r} is unknown; synthetic modes: {", ".join(NOISE_MODES)}')


# ----------------------------------------------------------------------------------------------------
# Noise drawn at the original resolution, resampled to the stored grid

RESIZES = ('shorter', 'nearest', 'bilinear')   # how stored images were made (data.transforms.resize_*)


def _pil_matrix(n_in, n_out, nearest):
  """[n_out, n_in] matrix of PIL's 1-D resize n_in -> n_out (bilinear with antialiasing, or nearest): the
  vertical-only resize of identity columns (PIL skips the pass of an unchanged axis), in chunks."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = np.empty((n_out, n_in), np.float32)
  for a in range(0, n_in, 512):
    k = min(512, n_in - a)
    eye = np.zeros((n_in, k), np.float32)
    eye[a + np.arange(k), np.arange(k)] = 1.0
    out[:, a:a + k] = np.asarray(Image.fromarray(eye, 'F').resize((k, n_out), Image.NEAREST if nearest
                                                                  else Image.BILINEAR))
  return out


def _gauss_matrix(n, sigma, radius):
  """[n, n] sparse matrix of the normalised 1-D Gaussian filter (2*radius+1 taps) with mirror borders
  (kornia's 'reflect' = scipy's 'mirror': index -1 reads 1)."""
  taps = np.arange(-radius, radius + 1)
  k = np.exp(-0.5 * (taps / sigma) ** 2)
  k /= k.sum()
  rows = np.repeat(np.arange(n), len(taps))
  cols = rows + np.tile(taps, n)
  if n == 1:
    cols = np.zeros_like(cols)
  else:
    period = 2 * (n - 1)
    cols = np.abs(cols) % period
    cols = np.where(cols >= n, period - cols, cols)
  return sparse.csr_matrix((np.tile(k, n), (rows, cols)), shape=(n, n))


def _axes(orig_hw, how, size):
  """Per axis (n_resized, crop offset) of the stored geometry, and whether the resize is nearest."""
  (h0, w0), (h, w) = orig_hw, size
  if how == 'shorter':   # data.transforms.resize_shorter_crop: shorter side to h (= w), then centre crop
    if (h0, w0) == (h, h):
      nh, nw = h, h
    else:
      nh, nw = (h, max(h, int(h * w0 / h0))) if h0 <= w0 else (max(h, int(h * h0 / w0)), h)
    return (nh, (nh - h) // 2), (nw, (nw - h) // 2), False
  if how not in RESIZES:
    raise ValueError(f'resize {how!r} is unknown; allowed: {", ".join(RESIZES)}')
  return (h, 0), (w, 0), how == 'nearest'


class Resampling:
  """Maps layers drawn at an original size [H0,W0] to the stored grid [h,w] of images made from such
  originals by `how` ('shorter': shorter side + centre crop, 'nearest' / 'bilinear': squash to the size),
  as separable sparse matrices rows [h,H0], cols [w,W0] (see the module docstring)."""

  def __init__(self, orig_hw, how, size):
    self.orig_hw, self.how, self.size = tuple(int(v) for v in orig_hw), how, tuple(int(v) for v in size)
    (nh, y0), (nw, x0), self.nearest = _axes(self.orig_hw, how, self.size)
    h, w = self.size
    self._rows = _pil_matrix(self.orig_hw[0], nh, self.nearest)[y0:y0 + h]
    self._cols = _pil_matrix(self.orig_hw[1], nw, self.nearest)[x0:x0 + w]
    self._blurred = {}

  def _mats(self, size_scale):
    if size_scale is None:
      return sparse.csr_matrix(self._rows), sparse.csr_matrix(self._cols)
    if size_scale not in self._blurred:   # the confetti blur of `_blur`, folded into the resize
      sigma, radius = 5.0 * size_scale, max(1, int(round(12 * size_scale)))
      self._blurred[size_scale] = tuple(sparse.csr_matrix(m) @ _gauss_matrix(m.shape[1], sigma, radius)
                                        for m in (self._rows, self._cols))
    return self._blurred[size_scale]

  def apply(self, layer, blur_scale=None):
    """float64 [h,w,C] = resize(blur(layer)) for a layer [H0,W0,C] (blur only when blur_scale is given)."""
    layer = np.asarray(layer)
    h0, w0, c = layer.shape
    rows, cols = self._mats(blur_scale)
    flat = layer.reshape(h0, w0 * c)
    t = np.empty((rows.shape[0], w0 * c), np.float64)
    for a in range(0, w0 * c, 3072):   # column chunks: no float copy of a large original
      t[:, a:a + 3072] = rows @ flat[:, a:a + 3072].astype(np.float64)   # [h, W0*C]
    t = t.reshape(-1, w0, c).transpose(1, 0, 2).reshape(w0, -1)       # [W0, h*C]
    out = (cols @ t).reshape(self.size[1], self.size[0], c).transpose(1, 0, 2)
    if self.nearest:   # exact: the reference truncates the blurred map (`.int()`) before nearest sampling
      near = np.rint(out)
      out = np.trunc(np.where(np.abs(out - near) < 1e-4, near, out))   # float noise at integers
    return out

  def noise(self, mode, rng, channels, size_scale=1.0):
    """Noise of `mode` drawn at the original size, on the stored grid (float64 [h,w,C])."""
    shape = self.orig_hw + (int(channels),)
    if mode in CONFETTI_MODES:
      return self.apply(_confetti_layer(rng, shape, size_scale, mode == 'confetti_pm'), blur_scale=size_scale)
    return self.apply(np.rint(noise(mode, rng, shape, size_scale=size_scale)))


@functools.lru_cache(maxsize=64)
def resampling(orig_hw, how, size):
  """A cached `Resampling` (datasets usually have few distinct original sizes)."""
  return Resampling(tuple(orig_hw), how, tuple(size))


def _to_u8(x):
  x = np.asarray(x)
  if x.dtype.kind == 'f':  # float noise: min-max rescaled per image to 0..255 (spec §6.4)
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(x)
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def make_anomaly(supervise_mode, noise_mode, rng, nominal, *, oe_image=None, oe_mask=None, offline=False,
                 size_scale=1.0, resampling=None, gt_min_change=0):
  """Returns (anomaly uint8 [H,W,C], gtmap float32 [H,W]) for one nominal uint8 image (spec §6).

  resampling: a `Resampling` from the image's original size to its stored size; malformed_normal(_gt) then
  draws synthetic noise at the original resolution, as the reference's custom runner does (spec §5.9).

  Paste modes (`PASTE_MODES`: CutPaste, `data/cutpaste.py`; blob self-paste, `data/selfpaste.py`, whose map
  also obeys `gt_min_change`): the anomaly is the nominal image with a patch of itself pasted
  elsewhere, for noise, malformed_normal and malformed_normal_gt alike (it is made from the nominal image in
  every mode); the map is the exact pasted region for malformed_normal_gt and all ones otherwise, as for the
  other noises (spec §6.4). `gt_min_change` (data.gt_min_change): malformed_normal_gt's map of an additive
  noise marks the pixels where some channel changed by more than this many uint8 levels (0: any change, the
  reference), so that a blob too faint to see (dark confetti on a dark region) is not a pixel to detect. oe_image, offline and size_scale do not apply; `resampling` is ignored: the patch
  sizes are relative to the image that is pasted into (scar sizes scale with sqrt(H·W)/256)."""
  x = np.asarray(nominal)
  h, w, c = x.shape
  if noise_mode in PASTE_MODES and oe_image is None:
    if supervise_mode not in ('noise', 'malformed_normal', 'malformed_normal_gt'):
      raise ValueError(f'supervise_mode={supervise_mode!r} cannot generate anomalies; use noise, '
                       'malformed_normal or malformed_normal_gt')
    if noise_mode in selfpaste.SELFPASTE_MODES:
      out, mask = selfpaste.blobpaste(rng, x, min_change=gt_min_change)
    else:
      out, mask = cutpaste.cutpaste(rng, x, cutpaste.VARIANT_OF_MODE[noise_mode])
    gt = mask.astype(np.float32) if supervise_mode == 'malformed_normal_gt' else np.ones((h, w), np.float32)
    return out, gt
  if supervise_mode == 'noise':
    if oe_image is not None:
      img = np.asarray(oe_image, np.uint8)
      gt = np.ones((h, w), np.float32) if oe_mask is None else (np.asarray(oe_mask) > 0).astype(np.float32)
      return img, gt
    return _to_u8(noise(noise_mode, rng, x.shape, size_scale=size_scale)), np.ones((h, w), np.float32)
  if supervise_mode not in ('malformed_normal', 'malformed_normal_gt'):
    raise ValueError(f'supervise_mode={supervise_mode!r} cannot generate anomalies; use noise, '
                     'malformed_normal or malformed_normal_gt')
  if oe_image is not None:   # an Outlier-Exposure image used as the noise added to the nominal image
    n = np.asarray(oe_image, np.int32)
  elif resampling is not None:
    if tuple(resampling.size) != (h, w):
      raise ValueError(f'resampling to {resampling.size} does not fit the {h}x{w} image')
    n = resampling.noise(noise_mode, rng, c, size_scale)
  else:
    n = np.rint(noise(noise_mode, rng, x.shape, size_scale=size_scale)).astype(np.int32)
  xi = x.astype(np.int32) if n.dtype.kind == 'i' else x.astype(np.float64)
  if offline:  # spec §6.3: flip the noise sign on bright pixels
    bright = xi.sum(-1, keepdims=True) > 0.11 * 255 * c
    n = np.where(bright, -n, n)
  else:        # spec §6.4: brighten instead of darken when darkening does (almost) nothing
    d = abs(float(np.mean(np.clip(xi + n, 0, 255) - xi)))
    d_inv = abs(float(np.mean(np.clip(xi - n, 0, 255) - xi)))
    if d < 0.025 and d_inv > d:
      n = -n
  out = np.clip(np.rint(xi + n), 0, 255).astype(np.uint8)
  if supervise_mode == 'malformed_normal_gt':
    change = np.abs(out.astype(np.int16) - x.astype(np.int16)).max(axis=-1)
    gt = (change > gt_min_change).astype(np.float32)
  else:
    gt = np.ones((h, w), np.float32)
  return out, gt
