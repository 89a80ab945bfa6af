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
      y += np.einsum('nhwc,co->nhwo', xp[:, i:i + oh, j:j + ow], w[i, j])
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
      dxp[:, i:i + oh, j:j + ow] += np.einsum('nhwo,co->nhwc', dy, w[i, j])
      dw[i, j] = np.einsum('nhwc,nhwo->co', xp[:, i:i + oh, j:j + ow], dy)
  return dxp[:, pad:pad + x.shape[1], pad:pad + x.shape[2]], dw
