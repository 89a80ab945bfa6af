"""NumPy references shared by several test files (written from the spec, independent of the package)."""
import numpy as np


def np_window(r, std):
  """scipy 'gaussian' window; even r: duplicate the centre of the r-1 window, then halve (spec §4)."""
  if r % 2:
    n = np.arange(r)
    return np.exp(-0.5 * ((n - (r - 1) / 2) / std) ** 2)
  g = np_window(r - 1, std)
  c = (r - 2) // 2
  return np.insert(g, c + 1, g[c]) / 2


def np_algorithm1(a, r, j, s, H, std):
  """Transposed conv with the 2-D kernel (stride j, output padding), then crop (spec §4 steps 1-3)."""
  n, h, w = a.shape
  G = np.outer(np_window(r, std), np_window(r, std))
  op = H - (h - 1) * j - 1 if r % 2 else H - (h - 1) * j - 2
  full = (h - 1) * j + r + op
  out = np.zeros((n, full, full))
  for y in range(h):
    for x in range(w):
      out[:, y * j:y * j + r, x * j:x * j + r] += a[:, y, x, None, None] * G
  pad, si = (r - 1) // 2, int(s)
  return out[:, pad - si:full - (pad + si), pad - si:full - (pad + si)]


def np_algorithm1_hw(a, r, j, s, H, W, std):
  """np_algorithm1 for rectangular maps [n, h, w] -> [n, H, W] (the same transposed conv, per-axis sizes)."""
  n, h, w = a.shape
  G = np.outer(np_window(r, std), np_window(r, std))
  extra = 1 if r % 2 else 2
  fh, fw = (h - 1) * j + r + H - (h - 1) * j - extra, (w - 1) * j + r + W - (w - 1) * j - extra
  out = np.zeros((n, max(fh, (h - 1) * j + r), max(fw, (w - 1) * j + r)))
  for y in range(h):
    for x in range(w):
      out[:, y * j:y * j + r, x * j:x * j + r] += a[:, y, x, None, None] * G
  pad, si = (r - 1) // 2, int(s)
  return out[:, pad - si:fh - (pad + si), pad - si:fw - (pad + si)]


def np_conv(x, w, pad):
  """float64 cross-correlation, NHWC x HWIO, stride 1, symmetric zero padding (direct sum over taps)."""
  k = w.shape[0]
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  oh, ow = xp.shape[1] - k + 1, xp.shape[2] - k + 1
  y = np.zeros(x.shape[:1] + (oh, ow, w.shape[3]))
  for i in range(k):
    for j in range(k):
      y += xp[:, i:i + oh, j:j + ow] @ w[i, j]   # [n,oh,ow,c] @ [c,o] (BLAS; einsum is 4x slower here)
  return y


def np_conv_grads(x, w, pad, dy):
  """Adjoint of `np_conv`: (dx, dw) (scatter of every tap into the padded input; outer products for the weight)."""
  k = w.shape[0]
  oh, ow = dy.shape[1:3]
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  dxp = np.zeros_like(xp)
  dw = np.zeros_like(w)
  for i in range(k):
    for j in range(k):
      dxp[:, i:i + oh, j:j + ow] += dy @ w[i, j].T
      dw[i, j] = np.tensordot(xp[:, i:i + oh, j:j + ow], dy, axes=([0, 1, 2], [0, 1, 2]))   # sum_nhw x dy^T
  return dxp[:, pad:pad + x.shape[1], pad:pad + x.shape[2]], dw


def np_rank_auc(labels, scores):
  """ROC AUC as the Mann-Whitney U statistic from average ranks (ties get their mean rank)."""
  labels = np.asarray(labels).reshape(-1).astype(bool)
  scores = np.asarray(scores, np.float64).reshape(-1)
  order = np.argsort(scores, kind='mergesort')
  ranks = np.empty(len(scores))
  s = scores[order]
  i = 0
  while i < len(s):
    j = i
    while j + 1 < len(s) and s[j + 1] == s[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2 + 1
    i = j + 1
  p, n = labels.sum(), (~labels).sum()
  return (ranks[labels].sum() - p * (p + 1) / 2) / (p * n)


def np_aupro(masks, heats, fpr_limit=0.3):
  """AUPRO from its definition: at every distinct score t (descending), FPR(t) = share of mask-0 pixels with
  score >= t and PRO(t) = mean over 8-connected defect regions of the share of their pixels with score >= t;
  trapezoids up to fpr_limit, the last point linearly interpolated there, divided by fpr_limit."""
  from scipy import ndimage
  scores = np.concatenate([np.asarray(h, np.float64).reshape(-1) for h in heats])
  nominal = np.concatenate([(np.asarray(m) <= 0).reshape(-1) for m in masks])
  regions = []
  offset = 0
  for m, h in zip(masks, heats):
    lab, n = ndimage.label(np.asarray(m) > 0, structure=np.ones((3, 3)))
    regions += [offset + np.flatnonzero(lab.reshape(-1) == k) for k in range(1, n + 1)]
    offset += np.asarray(h).size
  pts = [(0.0, 0.0)]
  for t in np.unique(scores)[::-1]:
    hit = scores >= t
    pts.append((hit[nominal].mean(), np.mean([hit[r].mean() for r in regions])))
  area = 0.0
  for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
    if x1 > fpr_limit:
      y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
      area += (fpr_limit - x0) * (y0 + y1) / 2
      break
    area += (x1 - x0) * (y0 + y1) / 2
  return area / fpr_limit
