"""Metrics (spec §8.2): exact ROC AUC (ties as sklearn), pixel AUC at scale, ROC curves, thresholds,
AUPRO, and PyTorch-legacy nearest resizing. Host-side NumPy; AUCs are fractions in [0, 1]."""
import numpy as np


def auc_from_sorted_groups(pos, neg):
  """AUC from per-tie-group positive/negative counts in ascending score order (Mann-Whitney, ties 1/2)."""
  pos = pos.astype(np.float64)
  neg = neg.astype(np.float64)
  neg_below = np.cumsum(neg) - neg
  return float(np.sum(pos * (neg_below + 0.5 * neg))), float(pos.sum()), float(neg.sum())


def roc_auc(labels, scores, valid=None):
  """Exact ROC AUC of scores for binary labels (1 = positive), identical to sklearn's roc_auc_score."""
  labels = np.asarray(labels).reshape(-1)
  scores = np.asarray(scores, np.float64).reshape(-1)
  if valid is not None:
    keep = np.asarray(valid).reshape(-1) > 0
    labels, scores = labels[keep], scores[keep]
  labels = labels.astype(bool)
  order = np.argsort(scores, kind='stable')
  s, l = scores[order], labels[order]
  starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
  pos = np.add.reduceat(l.astype(np.int64), starts) if len(s) else np.zeros(0)
  cnt = np.diff(np.r_[starts, len(s)])
  num, p, n = auc_from_sorted_groups(pos, cnt - pos)
  if p == 0 or n == 0:
    raise ValueError(f'ROC AUC needs both classes; got {int(p)} positives and {int(n)} negatives')
  return num / (p * n)


def sortable_u32(x):
  """float32 -> uint32 keys with the same order (monotone bijection; -0.0 treated as +0.0)."""
  x = np.asarray(x, np.float32) + np.float32(0.0)
  b = x.view(np.uint32)
  return np.where(b & np.uint32(0x80000000), ~b, b | np.uint32(0x80000000)).astype(np.uint32)


def pixel_auc(masks, heatmaps, chunk=1 << 22):
  """Exact ROC AUC over all pixels of all images (spec §8.2), ties counted 1/2 as sklearn.

  masks, heatmaps: iterables (lists or generators) of 2-D arrays, pairwise of equal shape, any sizes;
  masks are binarised with int() truncation as the reference (value >= 1 -> anomalous). Scores become
  order-preserving uint32 keys split into nominal and anomalous pixels; the nominal keys are sorted in place
  and every (sorted) anomalous key is located by binary search: AUC = sum(#nominal < a + 1/2 #nominal == a)
  / (P N). Memory: 4 bytes per pixel plus a transient copy while concatenating (<= 8 bytes per pixel, plus
  16 bytes per anomalous pixel in chunks of `chunk`); time O(n log n).
  """
  neg, pos = [], []
  for m, h in zip(masks, heatmaps):
    m = np.asarray(m)
    h = np.asarray(h)
    if m.shape != h.shape:
      raise ValueError(f'pixel_auc: mask shape {m.shape} differs from heatmap shape {h.shape}')
    k = sortable_u32(h.reshape(-1))
    lab = m.reshape(-1) >= 1
    neg.append(k[~lab])
    pos.append(k[lab])
  if not neg:
    raise ValueError('pixel_auc: no images')
  neg = np.concatenate(neg) if len(neg) > 1 else neg[0]
  pos = np.concatenate(pos) if len(pos) > 1 else pos[0]
  n_neg, n_pos = neg.size, pos.size
  if n_pos == 0 or n_neg == 0:
    raise ValueError(f'pixel AUC needs anomalous and nominal pixels; got {n_pos} and {n_neg}')
  neg.sort()
  pos.sort()  # sorted queries: cache-friendly binary searches
  num = 0.0
  for i in range(0, n_pos, chunk):
    q = pos[i:i + chunk]
    lo = np.searchsorted(neg, q, 'left')
    hi = np.searchsorted(neg, q, 'right')
    num += float(lo.sum(dtype=np.float64)) + 0.5 * float((hi - lo).sum(dtype=np.float64))
  return num / (float(n_pos) * float(n_neg))


def _cumulative_counts(labels, scores):
  """(labels as bool, distinct scores in descending order, true positives, false positives) when predicting
  anomalous for every score >= each distinct score: the cumulative sums under ROC and F1."""
  labels = np.asarray(labels).reshape(-1).astype(bool)
  scores = np.asarray(scores, np.float64).reshape(-1)
  order = np.argsort(-scores, kind='stable')
  s, l = scores[order], labels[order]
  last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
  tps = np.cumsum(l)[last].astype(np.float64)
  fps = (last + 1) - tps
  return labels, s[last], tps, fps


def roc_curve(labels, scores):
  """(fpr, tpr, thresholds) as sklearn.metrics.roc_curve(drop_intermediate=False)."""
  _, distinct, tps, fps = _cumulative_counts(labels, scores)
  p, n = tps[-1] if len(tps) else 0, fps[-1] if len(fps) else 0
  tpr = np.r_[0.0, tps / p if p else np.full_like(tps, np.nan)]
  fpr = np.r_[0.0, fps / n if n else np.full_like(fps, np.nan)]
  thresholds = np.r_[np.inf, distinct]
  return fpr, tpr, thresholds


def f1_max_threshold(labels, scores):
  """The threshold t (predict anomalous when score >= t) maximising F1 on labelled data; returns (t, f1)."""
  labels, distinct, tps, fps = _cumulative_counts(labels, scores)
  p = float(labels.sum())
  if p == 0:
    raise ValueError('f1_max_threshold needs at least one positive label')
  f1 = 2 * tps / (p + tps + fps)
  i = int(np.argmax(f1))
  return float(distinct[i]), float(f1[i])


def quantile_threshold(nominal_scores, q):
  """Threshold for nominal-only data: the q-quantile of nominal scores."""
  x = np.asarray(nominal_scores, np.float64).reshape(-1)
  if x.size == 0:
    raise ValueError('quantile_threshold: no nominal scores')
  if not 0 < q <= 1:
    raise ValueError(f'quantile q={q} must be in (0, 1]')
  return float(np.quantile(x, q))


def defect_regions(mask):
  """(region label per pixel [H*W] (0 = nominal), pixels per label [n+1]): the 8-connected defect regions of a
  mask (value > 0 = defect), as AUPRO counts them."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  lab, n = ndimage.label(np.asarray(mask) > 0, structure=np.ones((3, 3), int))
  return lab.reshape(-1), np.bincount(lab.reshape(-1), minlength=n + 1)


def pro_area(fpr, pro, fpr_limit):
  """Area under the PRO curve (points (fpr, pro) in increasing order, starting at (0, 0)) up to fpr_limit,
  trapezoidal with linear interpolation at the limit, normalised by it."""
  fpr = np.minimum(fpr, 1.0)
  keep = fpr <= fpr_limit
  x, y = fpr[keep], pro[keep]
  if x[-1] < fpr_limit and keep.sum() < len(fpr):
    k = int(np.argmax(~keep))
    x0, x1, y0, y1 = fpr[k - 1], fpr[k], pro[k - 1], pro[k]
    y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
    x, y = np.r_[x, fpr_limit], np.r_[y, y_lim]
  area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
  return area / fpr_limit


def image_threshold(labels, scores, q):
  """The image threshold stored with a run: {'image', 'image_rule'[, 'image_f1']}: F1-maximising on labelled
  test data (both labels present), else the q quantile of the nominal scores."""
  labels = np.asarray(labels)
  if len(np.unique(labels)) == 2:
    t, f1 = f1_max_threshold(labels, scores)
    return {'image': float(t), 'image_f1': float(f1), 'image_rule': 'f1_max on the labelled test set'}
  return {'image': float(quantile_threshold(np.asarray(scores)[labels == 0], q)),
          'image_rule': f'quantile {q} of nominal test scores'}


def aupro(masks, heatmaps, fpr_limit=0.3):
  """Area under the per-region-overlap curve up to FPR `fpr_limit`, normalised by it (MVTec-AD).

  Each 8-connected defect region of each mask is one region; PRO(t) = mean over regions of the fraction
  of its pixels with score >= t; FPR(t) = fraction of nominal pixels (mask 0) with score >= t. Exact curve
  over all distinct scores, trapezoidal integration, linear interpolation at fpr_limit. (Without holding
  every heatmap: `pixel_stream.PixelStream`.)
  """
  scores, fpr_w, pro_w = [], [], []
  regions = []
  for m, h in zip(masks, heatmaps):
    regions.append(defect_regions(m))
    scores.append(np.asarray(h, np.float64).reshape(-1))
  n_regions = sum(len(sz) - 1 for _, sz in regions)
  n_nominal = sum(int(sz[0]) for _, sz in regions)
  if n_regions == 0 or n_nominal == 0:
    raise ValueError('aupro needs at least one defect region and nominal pixels')
  for lab, sizes in regions:
    fpr_w.append(np.where(lab == 0, 1.0 / n_nominal, 0.0))
    inv = np.where(sizes > 0, 1.0 / np.maximum(sizes, 1), 0.0)
    pro_w.append(np.where(lab > 0, inv[lab] / n_regions, 0.0))
  s = np.concatenate(scores)
  fw = np.concatenate(fpr_w)
  pw = np.concatenate(pro_w)
  order = np.argsort(-s, kind='stable')
  s, fw, pw = s[order], fw[order], pw[order]
  last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
  return pro_area(np.r_[0.0, np.cumsum(fw)[last]], np.r_[0.0, np.cumsum(pw)[last]], fpr_limit)


def resize_nearest(x, size):
  """PyTorch legacy 'nearest' resize of a 2-D (or [H,W,C]) array: src = floor(dst * in/out)."""
  x = np.asarray(x)
  oh, ow = (size, size) if isinstance(size, int) else tuple(size)[:2]
  ih, iw = x.shape[:2]
  if (ih, iw) == (oh, ow):
    return x
  sh, sw = np.float32(ih) / np.float32(oh), np.float32(iw) / np.float32(ow)
  rows = np.minimum(np.floor(np.arange(oh, dtype=np.float32) * sh).astype(np.int64), ih - 1)
  cols = np.minimum(np.floor(np.arange(ow, dtype=np.float32) * sw).astype(np.int64), iw - 1)
  return x[rows][:, cols]


def border_share(heatmaps, band=16, top=0.01):
  """Where a detector's hottest pixels lie: the mean over images of the share of each image's top `top`
  fraction of heatmap pixels that lie within `band` pixels of the image border, and that band's share of the
  image area (the share a heatmap without spatial bias would give). On nominal images a ratio well above 1
  means the detector lights up the borders (the padding/border artefact), not the content. `band` may be a
  tuple of widths: then a list of (share, area), one per width, from one selection of the hottest pixels.
  """
  bands = tuple(band) if isinstance(band, (tuple, list)) else (band,)
  shares, areas = [[] for _ in bands], [None] * len(bands)
  for h in heatmaps:
    h = np.asarray(h, np.float64)
    rows, cols = h.shape
    k = max(1, int(np.ceil(top * h.size)))
    hot = np.argpartition(h.reshape(-1), h.size - k)[h.size - k:]
    for i, width in enumerate(bands):
      b = min(width, rows // 2, cols // 2)
      edge = np.ones((rows, cols), bool)
      edge[b:rows - b, b:cols - b] = False
      shares[i].append(float(edge.reshape(-1)[hot].mean()))
      areas[i] = float(edge.mean())
  if not shares[0]:
    raise ValueError('border_share: no heatmaps')
  out = [(float(np.mean(s)), a) for s, a in zip(shares, areas)]
  return out if isinstance(band, (tuple, list)) else out[0]
