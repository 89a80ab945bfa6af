"""Receptive-field bookkeeping and Gaussian receptive-field upsampling (spec §1.2, §4)."""
from __future__ import annotations

import math
from typing import NamedTuple


class Reception(NamedTuple):
  """Receptive field of an FCDD net's output pixel (spec §1.2): extent r, jump j, start s."""
  r: int
  j: int
  s: float


def default_std(r: int) -> float:
  """σ(r) of spec §4, used when no `gauss_std` is given."""
  return math.log10(0.45 * r + 1) + 0.25 if r < 32 else 10.0


def receptive_field(layers, in_size):
  """Receptive-field arithmetic of spec §1.2 over `layers` = [(kernel, stride, padding), ...].

  Returns (Reception(r, j, s), n_out)."""
  n, j, r, s = in_size, 1, 1, 0.0
  for k, st, p in layers:
    n = (n + 2 * p - k) // st + 1
    r = r + (k - 1) * j
    s = s + ((k - 1) / 2 - p) * j
    j = j * st
  return Reception(int(r), int(j), float(s)), n


def gaussian_kernel_1d(r: int, std: float):
  """The 1-D window g of spec §4 (unnormalised; even r: duplicate the centre of the r-1 window, halve)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  r = int(r)
  if r % 2 == 1:
    n = np.arange(r, dtype=np.float64)
    return np.exp(-0.5 * ((n - (r - 1) / 2) / std) ** 2)
  odd = gaussian_kernel_1d(r - 1, std)
  c = (r - 2) // 2
  return np.concatenate([odd[:c + 1], odd[c:c + 1], odd[c + 1:]]) / 2.0


def upsample_matrix(in_size: int, reception: Reception, out_size: int, std=None, xp=None):
  """[out_size, in_size] matrix M with out = M @ A @ M.T equal to Algorithm 1 (spec §4).

  Closed form per axis: out[y] = sum_i A[i] * g[y + pad - int(s) - i*j], g = 0 outside 0..r-1.
  `xp`: numpy (default; built on the host) or jax.numpy (traced: sizes may be symbolic dimensions, as in
  an export with polymorphic height and width)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  xp = np if xp is None else xp
  r, j, s = int(reception.r), int(reception.j), reception.s
  std = default_std(r) if std is None or std <= 0 else float(std)
  g = xp.asarray(gaussian_kernel_1d(r, std).astype(np.float32))
  pad, si = (r - 1) // 2, int(s)
  y = xp.arange(out_size)[:, None]
  i = xp.arange(in_size)[None, :]
  t = y + pad - si - i * j
  valid = (t >= 0) & (t < r)
  return xp.where(valid, g[xp.clip(t, 0, r - 1)], xp.float32(0.0)).astype(np.float32)


def upsample(heatmaps, reception: Reception, out_size, std=None):
  """Gaussian receptive-field upsampling (spec §4, Algorithm 1): [N,h,w] or [N,h,w,1] -> [N,H,W].

  Separable: two small matmuls with matrices built at trace time (one per axis, so h != w and H != W are
  fine: whole images of any aspect ratio in fcdd_jax.predict); jittable and differentiable. Symbolic sizes
  (jax.export with polymorphic H, W) build the same matrices in-graph.
  `out_size` is an int (square) or (H, W). `std`: the Gaussian's σ (`loss.gauss_std`); None or <= 0: the
  receptive field's own, `default_std`.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(heatmaps)
  if x.ndim == 4:
    x = x[..., 0]
  if x.ndim != 3:
    raise ValueError(f'upsample expects heatmaps [N,h,w] or [N,h,w,1], got shape {x.shape}')
  oh, ow = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
  import numpy as np  # pylint: disable=g-import-not-at-top
  static = all(isinstance(v, (int, np.integer)) for v in (oh, ow) + tuple(x.shape[1:]))  # else symbolic: in-graph
  mh = jnp.asarray(upsample_matrix(x.shape[1], reception, oh, std, xp=None if static else jnp))
  mw = jnp.asarray(upsample_matrix(x.shape[2], reception, ow, std, xp=None if static else jnp))
  x = x.astype(jnp.float32)
  return jnp.einsum('yh,nhw,xw->nyx', mh, x, mw, precision='highest')
