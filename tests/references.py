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
