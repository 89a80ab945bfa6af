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

CutPaste (`cutpaste`, noise modes cutpaste / cutpaste_scar / cutpaste_mixed, Li et al. CVPR 2021) is not an
additive noise: a patch of the nominal image is cut, colour-jittered, (for the scar) rotated and pasted at
another place of the same image; the exact pasted region is the GT map of malformed_normal_gt.
"""
import dataclasses
import functools

import numpy as np
from scipy import ndimage
from scipy import sparse

NOISE_MODES = ('confetti', 'gaussian', 'uniform', 'solid', 'blob', 'mixed_blob')


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


def _confetti_layer(rng, shape_hwc, size_scale=1.0):
  """The unblurred confetti map (coloured + gray rotated squares), int32, values <= 0."""
  h, w, c = shape_hwc
  sides = _scaled_sides(8, 54, size_scale)
  coloured = _blob_map(rng, (h, w, c), 0.000018, sides, lambda ch: rng.integers(-256, 0, ch))
  coloured += _blob_map(rng, (h, w, c), 0.000012, sides, lambda ch: np.full(ch, -255))   # gray; >= -511
  return coloured


def confetti(rng, shape_hwc, *, size_scale=1.0):
  """Confetti noise (spec §6.2; MVTec default): coloured + gray rotated squares, blurred; values <= 0."""
  return _blur(_confetti_layer(rng, shape_hwc, size_scale), size_scale).astype(np.int32)


def noise(mode, rng, shape_hwc, *, size_scale=1.0):
  h, w, c = shape_hwc
  if mode == 'confetti':
    return confetti(rng, shape_hwc, size_scale=size_scale)
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
  if mode in CUTPASTE_MODES:
    raise ValueError(f'noise_mode={mode!r} is not an additive noise; make_anomaly or cutpaste make it')
  raise ValueError(f'noise_mode={mode!r} is unknown; synthetic modes: {", ".join(NOISE_MODES)}')


# ----------------------------------------------------------------------------------------------------
# Noise drawn at the original resolution, resampled to the stored grid

RESIZES = ('shorter', 'nearest', 'bilinear')   # how stored images were made (input_pipeline.resize_*)


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
  if how == 'shorter':   # input_pipeline.resize_shorter_crop: shorter side to h (= w), then centre crop
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
    if mode == 'confetti':
      return self.apply(_confetti_layer(rng, shape, size_scale), blur_scale=size_scale)
    return self.apply(np.rint(noise(mode, rng, shape, size_scale=size_scale)))


@functools.lru_cache(maxsize=64)
def resampling(orig_hw, how, size):
  """A cached `Resampling` (datasets usually have few distinct original sizes)."""
  return Resampling(tuple(orig_hw), how, tuple(size))


# ----------------------------------------------------------------------------------------------------
# CutPaste (Li, Sohn, Yoon, Pfister, "CutPaste: Self-Supervised Learning for Anomaly Detection and
# Localization", CVPR 2021, arXiv:2104.04015): a patch of the image itself, pasted elsewhere

CUTPASTE_MODES = ('cutpaste', 'cutpaste_scar', 'cutpaste_mixed')
SYNTHETIC_MODES = NOISE_MODES + CUTPASTE_MODES   # every noise_mode this module generates without OE images
_CUTPASTE_VARIANT = {'cutpaste': 'normal', 'cutpaste_scar': 'scar', 'cutpaste_mixed': 'mixed'}

# Parameters and their sources. [paper] = Li et al. 2021 (arXiv:2104.04015), implementation details in the
# appendix, stated for MVTec images resized to 256x256; [reimpl] = the public PyTorch reimplementations
# LilitYolyan/CutPaste and Runinho/pytorch-cutpaste (`cutpaste.py`), which use the paper's values; the
# authors' TensorFlow code (google-research/deep_representation_one_class) was not available offline.
CUTPASTE_AREA = (0.02, 0.15)                 # [paper] patch area / image area, uniform
CUTPASTE_ASPECT = ((0.3, 1.0), (1.0, 3.3))   # [paper] patch aspect ratio (w/h) from (0.3, 1) U (1, 3.3); here
                                             # each interval with probability 1/2, log-uniform inside it, so
                                             # r and 1/r are equally likely ([reimpl]: uniform draws)
SCAR_WIDTH = (2, 16)                         # [paper] scar width in pixels at 256x256, integers
SCAR_LENGTH = (10, 25)                       # [paper] scar length in pixels at 256x256, integers
SCAR_ANGLE = (-45.0, 45.0)                   # [paper] scar rotation in degrees, uniform
SCAR_REFERENCE_SIDE = 256                    # [paper] image side the scar sizes refer to
CUTPASTE_JITTER = 0.1                        # [reimpl] ColorJitter(0.1, 0.1, 0.1, 0.1) on the patch (the paper
                                             # jitters the patch's colours; strengths from [reimpl])


@dataclasses.dataclass(frozen=True, eq=False)
class PasteGeometry:
  """Where a CutPaste patch comes from and where it lands (all in pixels of the [H,W] image).

  src: (y, x) top-left of the source rectangle, size: its (height, width); angle: rotation in degrees,
  counter-clockwise on screen (0 for plain CutPaste); dst: (y, x) top-left of the destination box whose
  pixels `inside` [bh,bw] receive source pixels (src_y, src_x) [bh,bw] (offsets inside the patch, nearest
  neighbour). For angle 0 the box is the rectangle itself and `inside` is all true."""
  variant: str
  src: tuple
  size: tuple
  angle: float
  dst: tuple
  inside: np.ndarray
  src_y: np.ndarray
  src_x: np.ndarray

  def mask(self, hw):
    """bool [H,W]: the pasted region (clipped to the image)."""
    h, w = hw
    out = np.zeros((h, w), bool)
    (y0, x0), (bh, bw) = self.dst, self.inside.shape
    ys, xs = slice(max(0, y0), min(h, y0 + bh)), slice(max(0, x0), min(w, x0 + bw))
    out[ys, xs] = self.inside[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    return out


def _rotated_footprint(ph, pw, angle):
  """Pixels of a ph x pw rectangle rotated by `angle` (nearest neighbour, inverse mapping): for every pixel
  of the tight bounding box, whether it is inside and which patch pixel (row, col) it shows. The box centre
  keeps the fractional part of the patch centre, so angle 0 maps pixels one to one."""
  t = np.deg2rad(angle)
  cy, cx = (ph - 1) / 2.0, (pw - 1) / 2.0
  fy, fx = cy % 1.0, cx % 1.0
  ext = int(np.ceil(0.5 * np.hypot(ph, pw))) + 2
  m = np.arange(-ext, ext + 2)
  oy, ox = np.meshgrid(m - fy, m - fx, indexing='ij')   # offsets of whole pixels from the box centre
  # counter-clockwise on screen (y down): destination offset (y', x') = (c*y - s*x, s*y + c*x) of a source
  # offset (y, x); inverse mapping: source = (c*y' + s*x', -s*y' + c*x')
  c, sn = np.cos(t), np.sin(t)
  qy = c * oy + sn * ox + cy
  qx = -sn * oy + c * ox + cx
  iy, ix = np.floor(qy + 0.5).astype(np.int64), np.floor(qx + 0.5).astype(np.int64)
  inside = (iy >= 0) & (iy < ph) & (ix >= 0) & (ix < pw)
  rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
  box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
  return inside[box], np.where(inside, iy, 0)[box], np.where(inside, ix, 0)[box]


def _scar_range(lo, hi, scale):
  lo2 = max(1, int(round(lo * scale)))
  return lo2, max(lo2, int(round(hi * scale)))


def cutpaste_geometry(rng, hw, variant='normal'):
  """Draws the geometry of one CutPaste ('normal'), CutPaste-Scar ('scar') or either with probability 1/2
  ('mixed') on an [H,W] image. Draw order: [variant], patch size, [angle], source, destination.

  normal: area = U(0.02, 0.15)·H·W; aspect ratio w/h log-uniform on [0.3, 1] or [1, 3.3] (each interval with
  probability 1/2, i.e. log-uniform on [0.3, 3.3] up to the paper's 3.3 vs 1/0.3); w = round(sqrt(area·
  aspect)), h = round(sqrt(area/aspect)), clipped to the image. scar: width (horizontal) and length
  (vertical) integers uniform in [2, 16] and [10, 25] at 256x256, scaled by sqrt(H·W)/256 (rounded, at least
  1; the scar keeps its share of the image area on any size, e.g. [2, 15] x [9, 23] at 240x240), rotation
  U(-45°, 45°). Source: a uniform position of the rectangle; destination: a uniform position of the
  (rotated) box inside the image (clipped where the box is larger than the image), an unrotated patch's
  destination redrawn while it equals the source (so that the paste moves, unless it fills the image)."""
  h, w = (int(v) for v in hw)
  if variant == 'mixed':
    variant = 'normal' if rng.random() < 0.5 else 'scar'
  if variant == 'normal':
    area = rng.uniform(*CUTPASTE_AREA) * h * w
    lo, hi = CUTPASTE_ASPECT[int(rng.integers(2))]
    aspect = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    pw = int(np.clip(round(np.sqrt(area * aspect)), 1, w))
    ph = int(np.clip(round(np.sqrt(area / aspect)), 1, h))
    angle = 0.0
  elif variant == 'scar':
    scale = np.sqrt(h * w) / SCAR_REFERENCE_SIDE
    (w_lo, w_hi), (l_lo, l_hi) = _scar_range(*SCAR_WIDTH, scale), _scar_range(*SCAR_LENGTH, scale)
    pw = min(w, int(rng.integers(w_lo, w_hi + 1)))
    ph = min(h, int(rng.integers(l_lo, l_hi + 1)))
    angle = float(rng.uniform(*SCAR_ANGLE))
  else:
    raise ValueError(f"CutPaste variant={variant!r} is unknown; allowed: 'normal', 'scar', 'mixed'")
  sy, sx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
  inside, iy, ix = _rotated_footprint(ph, pw, angle)
  bh, bw = inside.shape
  while True:   # an unrotated patch pasted where it was cut changes nothing: redraw (if it can move)
    dy, dx = int(rng.integers(0, max(0, h - bh) + 1)), int(rng.integers(0, max(0, w - bw) + 1))
    if (dy, dx) != (sy, sx) or angle != 0.0 or (h <= bh and w <= bw):
      break
  return PasteGeometry(variant, (sy, sx), (ph, pw), angle, (dy, dx), inside, iy, ix)


def jitter_factors(rng, strength=CUTPASTE_JITTER):
  """torchvision ColorJitter(b, c, s, h).get_params: the order of the four ops (a permutation), then the
  brightness, contrast, saturation factors uniform in [max(0, 1-x), 1+x] and the hue shift in [-h, h].
  `strength` is one value for all four or a (b, c, s, h) tuple; None/0 draws nothing."""
  if not strength:
    return None
  b, c, s, hue = (strength,) * 4 if np.isscalar(strength) else tuple(strength)
  order = rng.permutation(4)
  f = [rng.uniform(max(0.0, 1 - v), 1 + v) for v in (b, c, s)] + [rng.uniform(-hue, hue)]
  return tuple(int(i) for i in order), tuple(float(v) for v in f)


def jitter_patch(patch, factors):
  """Applies `jitter_factors` to a uint8 [h,w,C] patch with torchvision's PIL functional ops (PIL's
  ImageEnhance Brightness/Contrast/Color and the HSV hue shift of torchvision.transforms.functional_pil);
  saturation and hue leave gray patches unchanged, as torchvision does for 'L' images."""
  if factors is None:
    return patch
  from PIL import Image, ImageEnhance  # pylint: disable=g-import-not-at-top
  order, (fb, fc, fs, fh) = factors
  gray = patch.shape[-1] == 1
  im = Image.fromarray(patch[..., 0] if gray else patch)
  for op in order:
    if op == 0:
      im = ImageEnhance.Brightness(im).enhance(fb)
    elif op == 1:
      im = ImageEnhance.Contrast(im).enhance(fc)
    elif op == 2 and not gray:
      im = ImageEnhance.Color(im).enhance(fs)
    elif op == 3 and not gray:
      hh, ss, vv = im.convert('HSV').split()
      np_h = (np.asarray(hh, np.int64) + int(fh * 255)) % 256   # torchvision: uint8(hue * 255), wrapping
      im = Image.merge('HSV', (Image.fromarray(np_h.astype(np.uint8), 'L'), ss, vv)).convert('RGB')
  return np.asarray(im).reshape(patch.shape)


def paste(image, geom, factors=None):
  """(image with the (jittered) source patch pasted at geom.dst, mask bool [H,W] of the pasted region)."""
  x = np.asarray(image)
  squeeze = x.ndim == 2
  x = x[..., None] if squeeze else x
  h, w = x.shape[:2]
  (sy, sx), (ph, pw) = geom.src, geom.size
  patch = jitter_patch(np.ascontiguousarray(x[sy:sy + ph, sx:sx + pw]), factors)
  full = np.zeros((h, w), bool)
  vals = np.zeros(x.shape, x.dtype)
  (y0, x0), (bh, bw) = geom.dst, geom.inside.shape
  ys, xs = slice(max(0, y0), min(h, y0 + bh)), slice(max(0, x0), min(w, x0 + bw))
  ly, lx = slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0)
  inside = geom.inside[ly, lx]
  full[ys, xs] = inside
  vals[ys, xs] = patch[geom.src_y[ly, lx], geom.src_x[ly, lx]]
  out = np.where(full[..., None], vals, x)
  return (out[..., 0] if squeeze else out), full


def cutpaste(rng, image, variant='normal', *, jitter=CUTPASTE_JITTER):
  """CutPaste / CutPaste-Scar on one uint8 image [H,W] or [H,W,C] (C = 1 or 3): (anomaly uint8 of the same
  shape, mask bool [H,W] = exactly the pasted region). Geometry: `cutpaste_geometry`; then the jitter
  factors (`jitter_factors`, drawn after the geometry, so the geometry of a seed does not depend on the
  jitter); the jitter acts on the cut patch before the rotation, as in the reference implementations."""
  x = np.asarray(image)
  if x.dtype != np.uint8 or x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[-1] not in (1, 3)):
    raise ValueError(f'cutpaste needs a uint8 [H,W], [H,W,1] or [H,W,3] image, got {x.dtype} {x.shape}')
  geom = cutpaste_geometry(rng, x.shape[:2], variant)
  return paste(x, geom, jitter_factors(rng, jitter))


def _to_u8(x):
  x = np.asarray(x)
  if x.dtype.kind == 'f':  # float noise: min-max rescaled per image to 0..255 (spec §6.4)
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(x)
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def make_anomaly(supervise_mode, noise_mode, rng, nominal, *, oe_image=None, oe_mask=None, offline=False,
                 size_scale=1.0, resampling=None):
  """Returns (anomaly uint8 [H,W,C], gtmap float32 [H,W]) for one nominal uint8 image (spec §6).

  resampling: a `Resampling` from the image's original size to its stored size; malformed_normal(_gt) then
  draws synthetic noise at the original resolution, as the reference's custom runner does (spec §5.9).

  CutPaste modes (CUTPASTE_MODES, `cutpaste`): the anomaly is the nominal image with a patch of itself pasted
  elsewhere, for noise, malformed_normal and malformed_normal_gt alike (it is made from the nominal image in
  every mode); the map is the exact pasted region for malformed_normal_gt and all ones otherwise, as for the
  other noises (spec §6.4). oe_image, offline and size_scale do not apply; `resampling` is ignored: the patch
  sizes are relative to the image that is pasted into (scar sizes scale with sqrt(H·W)/256)."""
  x = np.asarray(nominal)
  h, w, c = x.shape
  if noise_mode in CUTPASTE_MODES and oe_image is None:
    if supervise_mode not in ('noise', 'malformed_normal', 'malformed_normal_gt'):
      raise ValueError(f'supervise_mode={supervise_mode!r} cannot generate anomalies; use noise, '
                       'malformed_normal or malformed_normal_gt')
    out, mask = cutpaste(rng, x, _CUTPASTE_VARIANT[noise_mode])
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
    gt = np.any(out != x, axis=-1).astype(np.float32)
  else:
    gt = np.ones((h, w), np.float32)
  return out, gt
