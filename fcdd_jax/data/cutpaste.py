"""CutPaste anomalies (Li, Sohn, Yoon, Pfister, "CutPaste: Self-Supervised Learning for Anomaly Detection and
Localization", CVPR 2021, arXiv:2104.04015): a patch of the image itself, pasted elsewhere.

Noise modes `cutpaste` (a rectangle), `cutpaste_scar` (a thin rotated strip) and `cutpaste_mixed` (either,
with probability 1/2). Not an additive noise: a patch of the nominal image is cut, colour-jittered, (for the
scar) rotated and pasted at another place of the same image; the exact pasted region is the GT map of
malformed_normal_gt (`anomalies.make_anomaly`). Pure NumPy/Pillow on one uint8 image with an explicit
np.random.Generator (stateless per example, like the other synthetic anomalies).
"""
import dataclasses

import numpy as np

CUTPASTE_MODES = ('cutpaste', 'cutpaste_scar', 'cutpaste_mixed')
VARIANT_OF_MODE = {'cutpaste': 'normal', 'cutpaste_scar': 'scar', 'cutpaste_mixed': 'mixed'}

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
