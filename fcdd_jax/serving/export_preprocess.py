"""The test preprocessing of a run in jnp, for the exported function (`export`): traceable with symbolic H, W.

`make_preprocess(p, c_in)` builds it from RUN/preprocessing.json `p`: uint8 images [N,H,W,c_in] -> channels,
resize/crop, normalisation or LCN -> the net input, plus the affine geometry maps that `heatmap_to_input`
inverts to bring heatmaps back onto the input pixels.

It is `data.transforms.make_test_transform` (the evaluation transform, predict --mode crop) reproduced in jnp,
bit-exactly where it is integer arithmetic: Pillow's 8-bit bilinear resize (22-bit fixed-point coefficients,
two passes in Pillow 13's order, rounding to 8 bits after each; `pil_bilinear_matrix`,
`pil_bilinear_resize`) and Pillow's nearest resize (double-accumulated source positions;
`pil_nearest_index`) run in float64 inside the function. A patch-trained run (resize='native', issue 27) has
no geometry: `make_native_preprocess` is its value normalisation alone. `check_preprocessing` refuses what
cannot be exported with an `ExportError`.
"""
import numpy as np

PRECISION_BITS = 22  # Pillow's 8-bit resampling precision (Resample.c: 32 - 8 - 2)
KINDS = ('normalize', 'lcn')
RESIZES = ('bilinear', 'nearest', 'shorter')


class ExportError(ValueError):
  """The run cannot be exported as asked (one-line message naming the file/field/value)."""


def pil_bilinear_matrix(n_in, n_full, n_out, offset=0):
  """Pillow's 8-bit BILINEAR coefficients as a float64 [n_out, n_in] matrix of integers (22-bit fixed point).

  Row o holds the weights of output pixel o + offset of a resize n_in -> n_full (offset > 0: a crop of the
  resized axis). Mirrors Resample.c precompute_coeffs + normalize_coeffs_8bpc; n_in, n_full, offset may be
  symbolic dimensions or traced integers. Call under `jax.enable_x64(True)`."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  f64 = jnp.float64
  n_in_f = jnp.asarray(n_in, f64)
  scale = n_in_f / jnp.asarray(n_full, f64)
  filterscale = jnp.maximum(scale, 1.0)
  support = filterscale  # bilinear support 1.0
  ss = 1.0 / filterscale
  center = (jnp.arange(n_out, dtype=f64) + jnp.asarray(offset, f64) + 0.5) * scale
  xmin = jnp.maximum(jnp.trunc(center - support + 0.5), 0.0)
  xend = jnp.minimum(jnp.trunc(center + support + 0.5), n_in_f)
  i = jnp.arange(n_in, dtype=f64)[None, :]
  inside = (i >= xmin[:, None]) & (i < xend[:, None])
  w = jnp.where(inside, jnp.maximum(0.0, 1.0 - jnp.abs((i - center[:, None] + 0.5) * ss)), 0.0)
  ww = w.sum(axis=1, keepdims=True)
  k = jnp.where(ww != 0.0, w / jnp.where(ww != 0.0, ww, 1.0), 0.0)
  return jnp.trunc(k * (1 << PRECISION_BITS) + 0.5)


def _pil_pass(x, kmat, axis):
  """One Pillow 8-bit resampling pass along `axis` (1: rows, 2: columns) of float64 [N,H,W,C] integers."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  eq = 'nhwc,oh->nowc' if axis == 1 else 'nhwc,ow->nhoc'
  y = jnp.einsum(eq, x, kmat, precision='highest')
  return jnp.clip(jnp.floor((y + (1 << (PRECISION_BITS - 1))) / (1 << PRECISION_BITS)), 0.0, 255.0)


def _static_identity(n_in, n_full, n_out, offset):
  """True when a resize axis is known at trace time to keep every pixel (no symbolic or traced size)."""
  v = (n_in, n_full, n_out, offset)
  return all(isinstance(u, (int, np.integer)) for u in v) and n_in == n_full == n_out and offset == 0


def pil_bilinear_resize(x, out_hw, full_hw=None, offset=(0, 0)):
  """Pillow `Image.resize(BILINEAR)` of uint8-valued float64 [N,H,W,C] to out_hw (optionally a crop at
  `offset` of the resize to `full_hw`). Call under enable_x64.

  Pass order as Pillow 13.0.0 (the pinned version): vertical first iff the height shrinks by more than
  twice the width's change (H > h_out and H - h_out > 2 (W - w_out)), else horizontal first; a rule
  fitted to and checked against Pillow on hundreds of size pairs (tests/export_test.py checks some)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  full_hw = full_hw or out_hw
  _, h, w, _ = x.shape
  kw = pil_bilinear_matrix(w, full_hw[1], out_hw[1], offset[1])
  kh = pil_bilinear_matrix(h, full_hw[0], out_hw[0], offset[0])
  skip_w = _static_identity(w, full_hw[1], out_hw[1], offset[1])
  skip_h = _static_identity(h, full_hw[0], out_hw[0], offset[0])
  if skip_w or skip_h:  # statically known identity pass (Pillow's pass is the identity then too)
    x = x if skip_w else _pil_pass(x, kw, 2)
    return x if skip_h else _pil_pass(x, kh, 1)
  hf, wf = jnp.asarray(h, jnp.float64), jnp.asarray(w, jnp.float64)
  fh, fw = jnp.asarray(full_hw[0], jnp.float64), jnp.asarray(full_hw[1], jnp.float64)
  vertical_first = (hf > fh) & (hf - fh > 2.0 * (wf - fw))
  return jax.lax.cond(vertical_first, lambda v: _pil_pass(_pil_pass(v, kh, 1), kw, 2),
                      lambda v: _pil_pass(_pil_pass(v, kw, 2), kh, 1), x)


def pil_nearest_index(n_in, n_out):
  """Source indices [n_out] of Pillow's NEAREST resize n_in -> n_out (Geometry.c ImagingScaleAffine: the
  floor of a/2, a/2 + a, ... accumulated in double, a = n_in / n_out). Call under enable_x64."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jnp.asarray(n_in, jnp.float64) / n_out
  def step(xo, _):
    return xo + a, jnp.floor(xo).astype(jnp.int32)
  _, idx = jax.lax.scan(step, a * 0.5, None, length=n_out)
  return jnp.clip(idx, 0, jnp.asarray(n_in, jnp.int32) - 1)


def _channels(x, c_in, channels):
  """fcdd_jax.data.transforms.to_rgb_or_gray on uint8 [N,H,W,c_in] -> float32 [N,H,W,channels] of integers."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x = x.astype(jnp.float32)
  if c_in == 4:
    x = x[..., :3]
  if channels == 3 and c_in == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if channels == 1 and c_in in (3, 4):  # PIL "L" weights, rounded as the NumPy path
    x = jnp.rint(x @ jnp.asarray([0.299, 0.587, 0.114], jnp.float32))[..., None]
  return jnp.clip(x, 0.0, 255.0)


def check_preprocessing(p, c_in):
  """Raises ExportError when preprocessing.json `p` holds something the exported function cannot do."""
  kind, resize = p.get('kind', 'normalize'), p.get('resize', 'bilinear')
  if kind not in KINDS:
    raise ExportError(f'preprocessing.json kind={kind!r} cannot be exported; exportable: {", ".join(KINDS)}')
  if resize not in RESIZES + ('native',):   # native: data/custom_native.py, whole images at their own size
    raise ExportError(f'preprocessing.json resize={resize!r} cannot be exported; exportable: {", ".join(RESIZES)}')
  ch = int(p['channels'])
  if ch not in (1, 3):
    raise ExportError(f'preprocessing.json channels={ch} cannot be exported; exportable: 1, 3')
  if c_in not in (1, 3, 4):
    raise ExportError(f'--input_channels={c_in}: expected 1 (gray), 3 (RGB) or 4 (RGBA)')
  need = ('mean', 'std') if kind == 'normalize' else ('lcn_min', 'lcn_max')
  for k in need:
    if p.get(k) is None:
      raise ExportError(f'preprocessing.json {k} is missing (needed by kind={kind!r})')
  if resize == 'native':   # no geometry: the sizes below do not apply
    return
  raw, inp = tuple(p.get('raw_size') or p['input_size']), tuple(p['input_size'])
  if resize == 'shorter' and raw[0] != raw[1]:
    raise ExportError(f'preprocessing.json raw_size={list(raw)}: resize=shorter needs a square raw size')
  if p.get('test_center') and (raw[0] < inp[0] or raw[1] < inp[1]):
    raise ExportError(f'preprocessing.json test_center with raw_size={list(raw)} smaller than input_size={list(inp)}')


def make_native_preprocess(p, c_in):
  """fn(uint8 [N,H,W,c_in]) -> float32 [N,H,W,C]: the value normalisation alone of a patch-trained run
  (resize='native': no geometry), as `data.transforms.Transform.normalize` after `to_rgb_or_gray`."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  check_preprocessing(p, c_in)
  if p.get('resize') != 'native' or p.get('kind', 'normalize') != 'normalize':
    raise ExportError(f'preprocessing.json resize={p.get("resize")!r}, kind={p.get("kind")!r}: the native-'
                      'resolution export needs resize=native and kind=normalize (a patch-trained run)')
  channels = int(p['channels'])

  def fn(images):
    x = _channels(images, c_in, channels) / 255.0
    return (x - jnp.asarray(p['mean'], jnp.float32)) / jnp.asarray(p['std'], jnp.float32)
  return fn


def make_preprocess(p, c_in):
  """fn(uint8 [N,H,W,c_in]) -> (float32 [N,h,w,C] net input, per-axis affine maps (s, t) such that image
  coordinate y (pixel centres at y + 0.5) lands on net-input coordinate y * s + t).

  Equals `data.transforms.make_test_transform(p)` image by image (see the module docstring)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  check_preprocessing(p, c_in)
  if p.get('resize') == 'native':
    raise ExportError('preprocessing.json resize=native: a patch-trained run exports through make_native_preprocess')
  channels = int(p['channels'])
  inp = tuple(int(v) for v in p['input_size'])
  raw = tuple(int(v) for v in (p.get('raw_size') or p['input_size']))
  resize = p.get('resize', 'bilinear')
  kind = p.get('kind', 'normalize')

  def fn(images):
    _, h, w, _ = images.shape
    x = _channels(images, c_in, channels)
    with jax.enable_x64(True):
      hf, wf = jnp.asarray(h, jnp.float64), jnp.asarray(w, jnp.float64)
      if resize == 'shorter':  # data.transforms.resize_shorter_crop: shorter side to n, centre crop n x n
        n = raw[0]
        nf = float(n)
        long_h = jnp.maximum(nf, jnp.trunc(nf * hf / wf))
        long_w = jnp.maximum(nf, jnp.trunc(nf * wf / hf))
        nh = jnp.where(hf <= wf, nf, long_h)
        nw = jnp.where(hf <= wf, long_w, nf)
        y0, x0 = jnp.floor((nh - n) / 2), jnp.floor((nw - n) / 2)
        x = pil_bilinear_resize(x.astype(jnp.float64), raw, (nh, nw), (y0, x0))
        sy, ty, sx, tx = nh / hf, -y0, nw / wf, -x0
      else:
        if resize == 'nearest':
          iy, ix = pil_nearest_index(h, raw[0]), pil_nearest_index(w, raw[1])
          x = jnp.take(jnp.take(x, iy, axis=1), ix, axis=2).astype(jnp.float64)
        else:
          x = pil_bilinear_resize(x.astype(jnp.float64), raw)
        sy, ty, sx, tx = raw[0] / hf, jnp.zeros((), jnp.float64), raw[1] / wf, jnp.zeros((), jnp.float64)
      x = x.astype(jnp.float32)
      sy, ty, sx, tx = (v.astype(jnp.float32) for v in (sy, ty, sx, tx))
    # data.transforms.Transform.test_geometry: centre crop of the raw image, or a nearest resize raw -> input
    if raw != inp:
      if p.get('test_center'):
        cy, cx = (raw[0] - inp[0]) // 2, (raw[1] - inp[1]) // 2
        x = x[:, cy:cy + inp[0], cx:cx + inp[1]]
        ty, tx = ty - cy, tx - cx
      else:
        with jax.enable_x64(True):
          iy, ix = pil_nearest_index(raw[0], inp[0]), pil_nearest_index(raw[1], inp[1])
        x = jnp.take(jnp.take(x, iy, axis=1), ix, axis=2)
        ry, rx = inp[0] / raw[0], inp[1] / raw[1]
        sy, ty, sx, tx = sy * ry, ty * ry, sx * rx, tx * rx
    x = x / 255.0
    if kind == 'lcn':  # data.transforms.lcn per image, then (x - lcn_min) / (lcn_max - lcn_min)
      x = x - x.mean(axis=(1, 2, 3), keepdims=True)
      scale = jnp.abs(x).mean(axis=(1, 2, 3), keepdims=True)
      x = jnp.where(scale > 0, x / jnp.where(scale > 0, scale, 1.0), x)
      lo, hi = (jnp.asarray(p[k], jnp.float32) for k in ('lcn_min', 'lcn_max'))
      x = (x - lo) / (hi - lo)
    else:
      x = (x - jnp.asarray(p['mean'], jnp.float32)) / jnp.asarray(p['std'], jnp.float32)
    return x, ((sy, ty), (sx, tx))
  return fn


def heatmap_to_input(heat, hw, maps):
  """Net-input heatmaps [N,h,w] -> [N,H,W] on the input pixel grid, by the inverse of the geometry maps
  (bilinear, antialiased when shrinking; 0 where an input pixel falls outside the net input)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  (sy, ty), (sx, tx) = maps
  scale = jnp.stack([1.0 / sy, 1.0 / sx])
  translation = jnp.stack([-ty / sy, -tx / sx])
  return jax.image.scale_and_translate(heat, (heat.shape[0],) + tuple(hw), (1, 2), scale, translation,
                                       method='linear', antialias=True, precision=jax.lax.Precision.HIGHEST)
