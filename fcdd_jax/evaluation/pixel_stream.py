"""Pixel AUC, AUPRO and the pixel threshold from a stream of heatmaps, one image at a time: memory bounded by
a histogram, not by the test set (native-resolution evaluation, issue 27: 4096x256 strips or 8k² images).

`PixelStream.add(mask, heatmap)` bins every pixel of an image by its score and drops the heatmap. The bins
are those of `metrics.sortable_u32`, the order-preserving uint32 key of a float32 score, shifted right by
`shift` bits: shift 0 is one bin per distinct float32 value (then both metrics are exactly `metrics.pixel_auc`
and `metrics.aupro`). The histogram covers the range of keys seen so far; when that range would exceed
`max_bins` bins, neighbouring bins are merged pairwise (shift + 1) until it fits. With the default 2^20 bins
(4 float64 arrays: 32 MB at most) and heatmaps spanning e.g. 0.01..10, a bin is 2^-17 of its value wide.

Per bin it counts the pixels with mask >= 1 and < 1 (the pixel AUC's classes, as `metrics.pixel_auc`), the
pixels with mask 0 (AUPRO's nominal pixels) and the sum over defect pixels of 1 / size of their 8-connected
region (AUPRO's per-region overlap, `metrics.defect_regions`). The pixel AUC is then the Mann-Whitney sum
over bins (pairs inside one bin count 1/2) and AUPRO the area under the curve through the bin boundaries
(points of the exact curve). Both come with the largest error the binning can have caused: pixel AUC
sum_b pos_b * neg_b / (2 P N); AUPRO sum_b dFPR_b * dPRO_b / 2 (the whole rectangle for the bin at the FPR
limit), over the limit. `ThresholdSample` keeps a seeded uniform pixel subsample for the pixel threshold.
"""
import numpy as np

from fcdd_jax.evaluation import metrics

MAX_BINS = 1 << 20
_FIELDS = ('pos', 'neg', 'nominal', 'pro')   # pixel AUC's classes; AUPRO's nominal pixels and region weights


class PixelStream:
  """Binned pixel AUC and AUPRO over images added one at a time (see the module doc)."""

  def __init__(self, max_bins=MAX_BINS):
    if max_bins < 2:
      raise ValueError(f'max_bins={max_bins}: expected at least 2')
    self.max_bins, self.shift, self.lo = int(max_bins), 0, None
    self.hist = {k: np.zeros(0) for k in _FIELDS}
    self.regions = 0

  def _coarsen(self):
    """Merges neighbouring bins pairwise: one more bit shifted out of the keys."""
    self.shift += 1
    if self.lo is None:
      return
    front = self.lo % 2
    for k, a in self.hist.items():
      a = np.pad(a, (front, (front + a.size) % 2))
      self.hist[k] = a.reshape(-1, 2).sum(axis=1)
    self.lo //= 2

  def _fit(self, kmin, kmax):
    """Grows (and if needed coarsens) the histogram so that it covers keys kmin..kmax; returns the offset of
    the first bin in bin units."""
    while True:
      lo, hi = kmin >> self.shift, (kmax >> self.shift) + 1
      if self.lo is not None:
        lo, hi = min(lo, self.lo), max(hi, self.lo + self.hist['pos'].size)
      if hi - lo <= self.max_bins:
        break
      self._coarsen()
    if self.lo is None:
      self.hist = {k: np.zeros(hi - lo) for k in _FIELDS}
    else:
      before, after = self.lo - lo, hi - self.lo - self.hist['pos'].size
      self.hist = {k: np.pad(a, (before, after)) for k, a in self.hist.items()}
    self.lo = lo
    return lo

  def add(self, mask, heatmap):
    """Bins one image's pixels (mask and heatmap of equal 2-D shape)."""
    m, h = np.asarray(mask), np.asarray(heatmap)
    if m.shape != h.shape:
      raise ValueError(f'pixel metrics: mask shape {m.shape} differs from heatmap shape {h.shape}')
    keys = metrics.sortable_u32(h.reshape(-1)).astype(np.int64)
    if not keys.size:
      return
    self._fit(int(keys.min()), int(keys.max()))
    b = (keys >> self.shift) - self.lo
    b0 = int(b.min())
    b -= b0
    n = int(b.max()) + 1
    pos = m.reshape(-1) >= 1
    lab, sizes = metrics.defect_regions(m)
    self.regions += len(sizes) - 1
    inv = np.where(sizes > 0, 1.0 / np.maximum(sizes, 1), 0.0)
    add = {'pos': np.bincount(b[pos], minlength=n), 'neg': np.bincount(b[~pos], minlength=n),
           'nominal': np.bincount(b[lab == 0], minlength=n),
           'pro': np.bincount(b, weights=np.where(lab > 0, inv[lab], 0.0), minlength=n)}
    for k, v in add.items():
      self.hist[k][b0:b0 + n] += v

  def pixel_auc(self):
    """(pixel AUC, largest error the binning can have caused)."""
    pos, neg = self.hist['pos'], self.hist['neg']
    num, p, n = metrics.auc_from_sorted_groups(pos, neg)
    if p == 0 or n == 0:
      raise ValueError(f'pixel AUC needs anomalous and nominal pixels; got {int(p)} and {int(n)}')
    return num / (p * n), float(np.sum(pos * neg)) / (2 * p * n)

  def aupro(self, fpr_limit=0.3):
    """(AUPRO up to `fpr_limit`, as metrics.aupro, largest error the binning can have caused)."""
    nominal, pro = self.hist['nominal'], self.hist['pro']
    n_nominal = float(nominal.sum())
    if self.regions == 0 or n_nominal == 0:
      raise ValueError('aupro needs at least one defect region and nominal pixels')
    used = (nominal > 0) | (pro > 0)
    fpr = np.r_[0.0, np.cumsum(nominal[used][::-1]) / n_nominal]   # bins from the highest score down
    tpr = np.r_[0.0, np.cumsum(pro[used][::-1]) / self.regions]
    area = metrics.pro_area(fpr, tpr, fpr_limit)
    df, dp = np.diff(np.minimum(fpr, 1.0)), np.diff(tpr)
    inside = fpr[1:] <= fpr_limit
    crossing = np.flatnonzero(~inside)[:1]
    bound = float(np.sum(df[inside] * dp[inside]) / 2 + np.sum(df[crossing] * dp[crossing]))
    return area, bound / fpr_limit

  def nbytes(self):
    return sum(a.nbytes for a in self.hist.values())


class ThresholdSample:
  """A uniform subsample of heatmap pixels (and their mask values) for fitting the pixel threshold: each pixel
  is kept with probability `take`, drawn from a generator seeded by (seed, image index), so that the sample
  does not depend on the order in which images are scored."""

  def __init__(self, take, seed=0):
    self.take, self.seed = float(take), int(seed)
    self.heat, self.mask = [], []

  def add(self, index, heatmap, mask=None):
    h = np.asarray(heatmap, np.float32).reshape(-1)
    sel = slice(None) if self.take >= 1 else np.random.default_rng([self.seed, int(index)]).random(h.size) < self.take
    self.heat.append(h[sel])
    if mask is not None:
      self.mask.append(np.asarray(mask).reshape(-1)[sel] > 0)

  def arrays(self):
    """(heatmap pixels, mask > 0 per pixel or None) of the sample."""
    heat = np.concatenate(self.heat) if self.heat else np.zeros(0, np.float32)
    return heat, (np.concatenate(self.mask) if self.mask else None)
