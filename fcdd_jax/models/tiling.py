"""Exact whole-image FCDD maps of any size, computed tile by tile (issue 27).

An FCDD net is fully convolutional and, in evaluation mode, every layer is local: convolutions, BatchNorm with
its running statistics (a per-channel affine map), activations and max pools. Output cell i of an axis depends
only on the input pixels [i*j + a, i*j + b] with a = s - (r-1)/2 and b = s + (r-1)/2 (the receptive field
(r, j, s) of spec §1.2; a <= 0, and a, b are integers for every net). So the low-resolution map of a whole
image can be assembled from windows of it:

* a window [u, v) of an axis starts at a multiple of the net's total stride j (u = 0 at the image's start),
  so that every pooling layer inside the window sees the same pairs/triples of positions as in the whole
  image (window cell t is whole-image cell t + u/j);
* the window's cells i whose whole dependency range [i*j + a, i*j + b] lies inside the window, or reaches
  past it only at the true image border (u = 0, v = n), never read the window's own zero (or -inf pool)
  padding and are therefore exactly the whole-image cells; each tile keeps its block of such "core" cells;
* zero padding thus happens at the true image border only, as in one pass over the whole image.

`TiledNet.lowres` returns the pseudo-Huber map [B, h', w'] of images given through a region callback (the
caller normalises only the window it is asked for: an 8192² image never exists as float32), with the same
h' x w' as one pass of the net over the whole image (`jax.eval_shape`). Tiles of one shape share a compiled
program (per axis at most two shapes: the interior windows, which the first one matches, and the last).
Memory is bounded by the tile: `tile` core pixels per axis plus the receptive field.

`upsample` is the Gaussian receptive-field upsampling (spec §4) of a whole map to (H, W) on the host, as two
float32 matrix products (the same matrices as `receptive.upsample`).
"""
import dataclasses
import math

import numpy as np

from fcdd_jax.models import receptive
from fcdd_jax.utils import progress

DEFAULT_TILE = 1024   # core input pixels per tile side (rounded down to a multiple of the net's stride)


@dataclasses.dataclass(frozen=True)
class Window:
  """One tile along one axis: input pixels [u, v), of which the whole-image cells [c0, c1) are kept."""
  u: int
  v: int
  c0: int
  c1: int


def dependency_range(reception):
  """(a, b): output cell i of the net depends on input pixels i*j + a .. i*j + b (both included)."""
  r, s = int(reception.r), float(reception.s)
  a, b = s - (r - 1) / 2, s + (r - 1) / 2
  if a != math.floor(a) or b != math.floor(b):
    raise ValueError(f'receptive field {reception} has a non-integer extent')
  return int(a), int(b)


def axis_windows(n, m, reception, cells):
  """Windows of an axis of n input pixels and m whole-image output cells, `cells` kept cells per window.

  Every window starts at a multiple of j (or 0), ends at the image's end or past the last kept cell's
  dependency range, and keeps cells [c0, c1): together they cover 0..m-1 once."""
  if m < 1 or n < 1:
    raise ValueError(f'no output cells for an axis of {n} pixels')
  j = int(reception.j)
  a, b = dependency_range(reception)
  cells = max(1, int(cells))
  length = (cells - 1) * j + b + 1 - (a // j) * j   # an interior window's pixels
  out = []
  for c0 in range(0, m, cells):
    c1 = min(m, c0 + cells)
    u = 0 if c0 == 0 else max(0, ((c0 * j + a) // j) * j)
    v = n if c1 == m else min(n, (c1 - 1) * j + b + 1)
    # the first and last windows grow inwards to an interior window's length (more context, same kept
    # cells): an image needs at most two window shapes per axis, so at most four compiled programs
    if c0 == 0 and c1 < m:
      v = min(n, max(v, length))
    if c1 == m and c0 > 0:
      u = min(u, max(0, ((n - length) // j) * j))
    if not 0 <= u < v <= n:
      raise ValueError(f'{m} output cells do not fit an axis of {n} pixels (window {u}..{v})')
    out.append(Window(u, v, c0, c1))
  return out


class TiledNet:
  """The FCDD map of whole images of any size, tiled (see the module doc).

  `net`: an FCDD net built with any_size=True; `variables`: {'params', 'batch_stats'}; `tile`: core input
  pixels per tile side (images with at most tile² pixels... per axis: an axis of at most `tile` cells' worth
  of pixels is one window, so small images run as one pass)."""

  def __init__(self, net, variables, reception, tile=DEFAULT_TILE, channels=3, verbose=False):
    import jax  # pylint: disable=g-import-not-at-top
    from fcdd_jax.models import losses  # pylint: disable=g-import-not-at-top
    self.net, self.variables, self.reception, self.channels = net, variables, reception, int(channels)
    j = int(reception.j)
    self.cells = max(1, int(tile) // j)   # kept cells per tile side
    self._jax = jax
    self._fn = jax.jit(lambda v, x: losses.fcdd_heatmaps(net.apply(v, x, train=False)))
    self._shapes = {}
    self.tiles_run = 0
    self.verbose = verbose   # a progress line at least every 30 s for images of more than 4 tiles

  def output_shape(self, h, w):
    """(h', w') of one pass of the net over an h x w image (no compilation: abstract evaluation)."""
    key = (int(h), int(w))
    if key not in self._shapes:
      jax = self._jax
      x = jax.ShapeDtypeStruct((1, key[0], key[1], self.channels), np.float32)
      out = jax.eval_shape(self._fn, self.variables, x)
      self._shapes[key] = tuple(out.shape[1:3])
    return self._shapes[key]

  def windows(self, h, w):
    """(row windows, column windows) of an h x w image."""
    oh, ow = self.output_shape(h, w)
    return (axis_windows(h, oh, self.reception, self.cells), axis_windows(w, ow, self.reception, self.cells))

  def lowres(self, region, h, w, batch=1):
    """float32 [batch, h', w']: the pseudo-Huber map of `batch` images of h x w pixels.

    region(y0, y1, x0, x1) -> float32 [batch, y1-y0, x1-x0, C]: the normalised net input of that window."""
    j = int(self.reception.j)
    rows, cols = self.windows(h, w)
    out = np.zeros((batch, rows[-1].c1, cols[-1].c1), np.float32)
    track = progress.Progress(f'{w}x{h} image(s): tiles', len(rows) * len(cols), 'tiles',
                              enabled=self.verbose and len(rows) * len(cols) > 4)
    for ry in rows:
      for cx in cols:
        x = np.asarray(region(ry.u, ry.v, cx.u, cx.v), np.float32)
        if x.shape[:3] != (batch, ry.v - ry.u, cx.v - cx.u):
          raise ValueError(f'region callback returned shape {x.shape}, expected '
                           f'{(batch, ry.v - ry.u, cx.v - cx.u)} + (C,)')
        low = np.asarray(self._fn(self.variables, x))
        oy, ox = ry.u // j, cx.u // j
        if low.shape[1] < ry.c1 - oy or low.shape[2] < cx.c1 - ox:   # the window geometry is wrong (a bug)
          raise AssertionError(f'tile {ry}, {cx} gave {low.shape[1:]} cells; needs '
                               f'{(ry.c1 - oy, cx.c1 - ox)}')
        out[:, ry.c0:ry.c1, cx.c0:cx.c1] = low[:, ry.c0 - oy:ry.c1 - oy, cx.c0 - ox:cx.c1 - ox]
        self.tiles_run += 1
        track.update()
    track.close()
    return out


def upsample(low, reception, size, std=None):
  """Gaussian receptive-field upsampling (spec §4) of one map [h', w'] to `size` (H, W), float32, on the host:
  M_H @ low @ M_W^T with `receptive.upsample_matrix` (exactly Algorithm 1 for any h', w', H, W)."""
  low = np.asarray(low, np.float32)
  mh = receptive.upsample_matrix(low.shape[0], reception, int(size[0]), std)
  mw = receptive.upsample_matrix(low.shape[1], reception, int(size[1]), std)
  return (mh @ (low @ mw.T)).astype(np.float32)


def image_score(low, heat, top):
  """`eval.image_score` of one whole image (losses.fcdd_image_scores on the host): top=None: the mean of the
  low-resolution map; else the mean of the largest max(1, round(top*H*W)) heatmap pixels (top=0: the max)."""
  if top is None:
    return float(np.mean(np.asarray(low, np.float64)))
  flat = np.asarray(heat, np.float32).reshape(-1)
  k = max(1, int(round(top * flat.size)))
  if k == 1:
    return float(flat.max())
  return float(np.mean(np.partition(flat, flat.size - k)[-k:], dtype=np.float64))
