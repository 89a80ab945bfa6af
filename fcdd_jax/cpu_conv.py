"""Convolutions for XLA:CPU: stride-1 NHWC convs as bfloat16 GEMMs (`gemm_conv`), and fused
conv-BN-activation-pool blocks with a hand-written backward pass (`conv_block`, below).

On this CPU (AMD EPYC, AVX512-BF16) XLA:CPU runs a bf16 x bf16 -> f32 matmul ~2x faster than a float32
one (its YNNPACK GEMM: ~360 GFLOP/s on 2 cores), but its convolutions get no bf16 speed-up: a bf16 conv is
upcast and run as a float32 conv. `gemm_conv` therefore writes a stride-1 convolution and both gradients as
three GEMMs (custom VJP):

  forward      y    = im2col(x, pad)  @ W.reshape(k*k*Cin, Cout)                 [R, k*k*Cin] @ [.., Cout]
  input grad   dx   = im2col(dy, k-1-pad) @ flip(W)^T.reshape(k*k*Cout, Cin)     (a conv of dy)
  weight grad  dW^T = dy^T @ im2col(x, pad)                                      [Cout, R] @ [R, k*k*Cin]

im2col concatenates the k*k shifted windows along channels. It moves the data as uint16 (a bf16 pad/slice/
concatenate is upcast to float32 and back by XLA:CPU, ~4x slower), and the forward's im2col is kept for the
weight gradient. Every dot is kept in the canonical [M,K] @ [K,N] row-major form: a transposed operand next
to a dot gets folded into the dot's dimension numbers, which the bf16 GEMM does not take (XLA then upcasts
the dot to float32, ~2-3x slower), hence dy^T as a real 4-D transpose and dW^T transposed after a reshape.

Products of bf16 numbers are exact in float32 and all sums accumulate in float32
(`preferred_element_type`), so the only roundings are those of the bf16 operands. The weight enters in its
own dtype (float32 params) and its gradient is returned in float32, never rounded to bf16.
"""
import functools
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp


def _as_bits(x):
  """Same-width unsigned-integer view of x: XLA:CPU upcasts bfloat16 data movement (pad, slice,
  concatenate, transpose) to float32 and back, which makes a bfloat16 im2col ~4x slower than a uint16 one."""
  if x.dtype.itemsize == 2 and jnp.issubdtype(x.dtype, jnp.floating):
    return jax.lax.bitcast_convert_type(x, jnp.uint16)
  return x


def _from_bits(b, dtype):
  return jax.lax.bitcast_convert_type(b, dtype) if b.dtype != dtype else b


def im2col(x, k, pad):
  """[N,H,W,C] -> [N,H',W',k*k*C] with H' = H + 2 pad - k + 1, columns ordered (i, j, c) like HWIO."""
  n, h, w, c = x.shape
  oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
  b = _as_bits(x)
  if pad:
    b = jnp.pad(b, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  if k > 1:
    b = jnp.concatenate([b[:, i:i + oh, j:j + ow, :] for i in range(k) for j in range(k)], axis=-1)
  return _from_bits(b, x.dtype)


def _mm(a, b):
  return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _fwd_impl(x, w, pad, dtype):
  k, _, ci, co = w.shape
  cols = im2col(x.astype(dtype), k, pad)
  n, oh, ow, kkc = cols.shape
  y = _mm(cols.reshape(-1, kkc), w.astype(dtype).reshape(kkc, co))
  return y.reshape(n, oh, ow, co), cols


def gemm_conv(x, w, pad, dtype=jnp.bfloat16):
  """Stride-1 convolution of x [N,H,W,Cin] with w [k,k,Cin,Cout] (HWIO), symmetric zero padding `pad`,
  computed as `dtype` GEMMs with float32 accumulation. Returns float32 [N,H',W',Cout]; x's cotangent is
  returned in x's dtype, w's in w's dtype (float32 params stay float32)."""
  return _gemm_conv(int(pad), jnp.dtype(dtype).name)(x, w)


@functools.lru_cache(maxsize=None)
def _gemm_conv(pad, dtype_name):
  dtype = jnp.dtype(dtype_name)

  @jax.custom_vjp
  def conv(x, w):
    return _fwd_impl(x, w, pad, dtype)[0]

  def fwd(x, w):
    y, cols = _fwd_impl(x, w, pad, dtype)
    return y, (cols, w, jnp.zeros((0,), x.dtype))  # x itself is not kept, only its dtype

  def bwd(res, dy):
    cols, w, x_dtype = res
    return _bwd_impl(cols, w, x_dtype.dtype, dy, pad, dtype)

  conv.defvjp(fwd, bwd)
  return conv


def _bwd_impl(cols, w, x_dtype, dy, pad, dtype):
  k, _, ci, co = w.shape
  x_hw = (cols.shape[1] + k - 1 - 2 * pad, cols.shape[2] + k - 1 - 2 * pad)
  dyc = dy.astype(dtype)
  # Weight gradient dW^T = dy^T @ cols ([Cout, R] @ [R, k*k*Cin]), reusing the forward's im2col. dy^T is a
  # real (4-D) transpose fused with the cast to `dtype`; the [Cout,k,k,Cin] result is transposed after a
  # reshape. Written as cols^T @ dy (or with 2-D transposes next to the dot), XLA folds the transpose into
  # the dot, which XLA:CPU's bf16 GEMM does not take: the dot then runs upcast to float32, ~2-3x slower.
  dyt = jnp.transpose(dy, (3, 0, 1, 2)).reshape(co, -1).astype(dtype)
  dw = _mm(dyt, cols.reshape(-1, k * k * ci)).reshape(co, k, k, ci).transpose(1, 2, 3, 0).astype(w.dtype)
  # Input gradient: a stride-1 convolution of dy with the flipped, transposed kernel (padding k-1-pad);
  # when pad > k-1 that padding is negative: convolve unpadded and crop.
  wt = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2).astype(dtype).reshape(k * k * co, ci)
  bp = k - 1 - pad
  dcols = im2col(dyc, k, max(bp, 0))
  n, oh, ow, _ = dcols.shape
  dx = _mm(dcols.reshape(-1, k * k * co), wt).reshape(n, oh, ow, ci)
  if bp < 0:  # pad > k - 1: x sits inside the padded frame at offset -bp
    dx = dx[:, -bp:-bp + x_hw[0], -bp:-bp + x_hw[1], :]
  return dx.astype(x_dtype), dw


# ----------------------------------------------------------------------------------------------------
# Fused conv -> BatchNorm -> activation -> max-pool block with a hand-written VJP (manual rematerialisation)

class BlockSpec(NamedTuple):
  """Static description of one fused block (hashable: it selects the compiled custom VJP).

  pad: symmetric zero padding of the stride-1 conv. bn: 'batch' (normalise with the batch statistics),
  'running' (with given statistics: eval mode or frozen BN) or None. eps: BN epsilon. act: 'relu', 'leaky'
  or None; slope: leaky slope. pool: k of a non-overlapping k x k max pool after the activation, or 0.
  dtype: compute dtype ('float32' | 'bfloat16'). conv: the conv family, 'gemm' (bf16 GEMMs on XLA:CPU where
  they pay, `gemm_conv`'s formulation) or 'xla' (XLA's convolutions); plan: None (per layer, `conv_plan`) or
  an explicit (forward, input gradient, weight gradient) plan."""
  pad: int
  bn: Optional[str]
  eps: float
  act: Optional[str]
  slope: float
  pool: int
  dtype: str
  conv: str
  plan: Optional[Tuple[str, str, str]] = None


def conv_block(spec, x, w, b, scale, bias, mean, var):
  """One conv (+bias) -> BatchNorm -> activation -> max pool block of a feature stack, as a single custom-VJP
  op whose backward pass keeps only the block's input and its conv output and recomputes the rest.

  Autodiff of the unfused layers keeps every intermediate of the forward pass alive until the backward pass
  (on FCDD_CNN224_VGG_NOPT at batch 32: the f32 centred and normalised BN tensors, the bf16 BN and ReLU
  outputs and the im2col buffers of every layer, 4.7 GiB of XLA temp space in bf16). Here the residuals are
  the block input (compute dtype) and the conv output z (compute dtype, as the unfused net rounds it); the
  backward pass recomputes the BN normalisation, the activation, the pool's argmax and (for 'gemm') the
  im2col from them in a few elementwise passes.

  Args: x [N,H,W,Cin]; w [k,k,Cin,Cout] (HWIO, float32 params); b [Cout] conv bias or shape (0,) for none;
  scale, bias [Cout] BN affine or shape (0,) for none; mean, var [Cout] the running statistics used when
  spec.bn == 'running' (ignored otherwise, never differentiated).
  Returns (y, batch_mean, batch_var): y [N,H',W',Cout] in the compute dtype; the float32 batch statistics
  (biased variance) when spec.bn == 'batch' (for the running averages; their cotangents are ignored),
  else `mean`, `var` unchanged.

  Numerics are those of the unfused layers (conv in the compute dtype with float32 accumulation, bias added in
  float32, z rounded to the compute dtype, BN in float32, output rounded to the compute dtype) up to float
  rounding: the batch statistics take one pass (shifted sums, `_batch_stats`) instead of two. Two gradient
  conventions are PyTorch's: the pool's gradient goes to the first maximum of each window (row-major), and
  an activation at exactly 0 takes the negative side's slope. The conv bias before a batch-statistics BN gets
  its exact gradient, 0.
  """
  return _block_vjp(spec)(x, w, b, scale, bias, mean, var)


def _f32(a):
  return a.astype(jnp.float32)


def conv_plan(conv, k, ci, co, hw):
  """How a block's stride-1 conv and its two gradients are computed: (forward, input gradient, weight
  gradient), each one of
    'xla'    XLA's convolution (on CPU: YNNPACK's, in float32 even for bf16 operands),
    'gemm'   one GEMM over an im2col ([R, k*k*C] @ [k*k*C, C']; bf16 operands on CPU, float32 accumulation),
    'taps'   weight gradient as k*k GEMMs dz^T @ x_tap over shifted copies of x (no k*k-wide im2col),
    'cols_t' weight gradient colsT @ dz over a transposed im2col of x (first layers: x has 1-3 channels),
    'filter' XLA's backward-filter convolution.
  `conv` is the block's family ('gemm': bf16 GEMMs on XLA:CPU; 'xla': XLA convolutions), hw the output's
  H*W. Measured per layer of FCDD_CNN224_VGG_NOPT at batch 32 (bench/README.md): an im2col costs about as
  much as its GEMM when the GEMM's output has <= 128 channels at >= 56x56 pixels, where YNNPACK's float32
  convolution is the faster one; the k*k tap GEMMs beat one GEMM over the k*k-wide im2col (half the copies)."""
  if conv == 'gemm':
    fwd = 'xla' if co <= 128 and ci >= 8 and hw >= 56 * 56 else 'gemm'
    dx = 'xla' if ci <= 128 and co >= 8 and hw >= 56 * 56 else 'gemm'
    dw = 'cols_t' if ci <= 4 else ('taps' if k == 3 and ci >= 32 else 'gemm')
    return fwd, dx, dw
  return 'xla', 'xla', 'cols_t' if ci <= 4 else ('taps' if k == 3 and ci >= 32 else 'filter')


def _lax_conv(x, w, pad):
  return jax.lax.conv_general_dilated(x, w, (1, 1), [(pad, pad)] * 2, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      preferred_element_type=jnp.float32)


def _plan(spec, w, z_shape):
  if spec.plan is not None:
    return spec.plan
  k, _, ci, co = w.shape
  return conv_plan(spec.conv, k, ci, co, z_shape[1] * z_shape[2])


KEEP_COLS_BYTES = 192 * 2 ** 20  # a forward im2col up to this size is kept for the weight gradient


def _conv_forward(spec, xc, w):
  """(float32 [N,H',W',Cout] conv of xc (already in the compute dtype) with w, im2col kept for the backward
  pass or None). An im2col is kept when the weight gradient is its GEMM too and it is small
  (KEEP_COLS_BYTES): recomputing it costs more than it saves on small nets (FCDD_CNN28_W's 5x5 layer: 160 MB
  at batch 128); the large ones of the 224^2 nets are recomputed."""
  dtype = jnp.dtype(spec.dtype)
  k = w.shape[0]
  oh, ow = xc.shape[1] + 2 * spec.pad - k + 1, xc.shape[2] + 2 * spec.pad - k + 1
  fwd, _, dw = _plan(spec, w, (0, oh, ow))
  if fwd == 'gemm':
    y, cols = _fwd_impl(xc, w, spec.pad, dtype)
    return y, (cols if dw == 'gemm' and cols.size * cols.dtype.itemsize <= KEEP_COLS_BYTES else None)
  return _lax_conv(xc, w.astype(dtype), spec.pad), None


def _conv_backward(spec, xc, w, dz, cols=None):
  """(dx in the compute dtype, dw float32) of the conv for cotangent dz (float32 [N,H',W',Cout]).
  xc arrives tied to the cotangent (`_after`): what is recomputed from it here (im2col, shifted copies)
  is neither merged with the forward pass's (CSE) nor scheduled early and kept alive in between. The input
  gradient of a first layer is the image's and never needed in training: XLA drops it."""
  dtype = jnp.dtype(spec.dtype)
  k, _, ci, co = w.shape
  _, dx_how, dw_how = _plan(spec, w, dz.shape)
  dzc = dz.astype(dtype)
  if dx_how == 'gemm':
    dx = _conv_input_grad(dz, w, spec.pad, dtype, xc.shape)
  else:  # a forward conv of dz with the flipped, transposed kernel (padding k-1-pad; crop when negative)
    bp = k - 1 - spec.pad
    dx = _lax_conv(dzc, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2).astype(dtype), max(bp, 0))
    if bp < 0:
      dx = dx[:, -bp:-bp + xc.shape[1], -bp:-bp + xc.shape[2], :]
  if dw_how == 'cols_t':
    # colsT @ dz: dz is used in its own layout. (dz^T @ cols makes XLA fuse the whole dz computation into a
    # transposing copy with strided reads: 0.6 s of a 7.6 s FCDD_CNN224_VGG_NOPT bf16 step.)
    dw = _wgrad_transposed(xc, dz, k, spec.pad, dtype)
  elif dw_how == 'gemm':  # dz^T @ im2col(x), as gemm_conv (the forward's im2col when kept)
    dw = _bwd_impl(im2col(xc, k, spec.pad) if cols is None else cols, w, dtype, dz, spec.pad, dtype)[1]
  elif dw_how == 'taps':
    p = spec.pad
    xp = _as_bits(jnp.pad(_as_bits(xc), ((0, 0), (p, p), (p, p), (0, 0))))
    oh, ow = dz.shape[1], dz.shape[2]
    if dtype == jnp.dtype(jnp.bfloat16):
      # canonical [Cout, R] @ [R, Cin] dots (the bf16 GEMM takes no transposed operand; a transpose next to
      # a dot is folded into it): the [k*k, Cout, Cin] stack is transposed as a whole afterwards
      dzt = jnp.transpose(dzc, (3, 0, 1, 2)).reshape(co, -1)
      taps = [_mm(dzt, _from_bits(xp[:, i:i + oh, j:j + ow, :], dtype).reshape(-1, ci))
              for i in range(k) for j in range(k)]
      dw = jnp.stack(taps).reshape(k, k, co, ci).transpose(0, 1, 3, 2)
    else:
      dzf = dzc.reshape(-1, co)
      taps = [_mm(_from_bits(xp[:, i:i + oh, j:j + ow, :], dtype).reshape(-1, ci).T, dzf)
              for i in range(k) for j in range(k)]
      dw = jnp.stack(taps).reshape(k, k, ci, co)
  else:  # 'filter'
    dw = _f32(jax.vjp(lambda ww: _lax_conv(xc, ww, spec.pad).astype(dtype), w.astype(dtype))[1](dzc)[0])
  return dx.astype(dtype), dw


def _wgrad_transposed(x, dz, k, pad, dtype):
  """Weight gradient [k,k,Cin,Cout] (float32) as colsT @ dz: colsT [k*k*Cin, R] is an im2col of x^T
  (concatenation along the major axis), dz [N,H',W',Cout] stays in its layout."""
  n, h, w, ci = x.shape
  co = dz.shape[-1]
  bt = jnp.transpose(_as_bits(x), (3, 0, 1, 2))
  bt = jnp.pad(bt, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
  cols_t = jnp.concatenate([bt[:, :, i:i + oh, j:j + ow] for i in range(k) for j in range(k)], axis=0)
  cols_t = _from_bits(cols_t, x.dtype).reshape(k * k * ci, -1)
  return _mm(cols_t, dz.reshape(-1, co).astype(dtype)).reshape(k, k, ci, co)


def _conv_input_grad(dz, w, pad, dtype, x_shape):
  """Input gradient of a stride-1 conv as one GEMM over an im2col of dz (see `_bwd_impl`)."""
  k, _, ci, co = w.shape
  wt = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2).astype(dtype).reshape(k * k * co, ci)
  bp = k - 1 - pad
  dcols = im2col(dz.astype(dtype), k, max(bp, 0))
  n, oh, ow, _ = dcols.shape
  dx = _mm(dcols.reshape(-1, k * k * co), wt).reshape(n, oh, ow, ci)
  if bp < 0:
    dx = dx[:, -bp:-bp + x_shape[1], -bp:-bp + x_shape[2], :]
  return dx


def _windows(a, k):
  n, h, w, c = a.shape
  return a.reshape(n, h // k, k, w // k, k, c)


def _channel_sums(*terms):
  """Per-channel sums over all axes but the last of several float32 [N,H,W,C] arrays, in one pass over the
  data: ONE variadic reduction over the batch axis (the terms' elementwise producers fused into it; the kept
  H, W, C axes are contiguous, so it streams and vectorises), then sums of the [H,W,C] partials. Summing over
  W or over all pixels at once is 3-5x slower on XLA:CPU (strided, sequential accumulation that also loses
  ~1e-3 of a variance over ~10^6 pixels); a single-output float32 reduce goes to YNNPACK, which first
  materialises its input in memory (a full-size float32 temporary per statistic)."""
  zero = jnp.zeros((), jnp.float32)
  partial = jax.lax.reduce(tuple(terms), (zero,) * len(terms),
                           lambda a, b: tuple(u + v for u, v in zip(a, b)), (0,))
  return tuple(jnp.sum(q, tuple(range(q.ndim - 1))) for q in partial)


def _batch_stats(a):
  """Per-channel batch mean and biased variance of a [N,H,W,C] (float32), in one pass over the data:
  sums of d = a - K and d^2 with K the first image's channel mean (the shifted-data algorithm; K lies within a
  few standard deviations of the mean, which keeps the cancellation in E[d^2] - E[d]^2 small)."""
  n = a.size // a.shape[-1]
  shift = jnp.mean(a[:1], axis=(0, 1, 2))
  d = a - shift
  s1, s2 = _channel_sums(d, d * d)
  m1 = s1 / n
  return shift + m1, jnp.maximum(s2 / n - m1 * m1, 0.0)


def _first_max(values):
  """(max, row-major index of the first maximum) of a list of equally shaped arrays, elementwise."""
  y = values[0]
  idx = jnp.zeros(y.shape, jnp.int32)
  for t in range(1, len(values)):
    take = values[t] > y  # strict: an earlier maximum keeps its place
    y = jnp.where(take, values[t], y)
    idx = jnp.where(take, t, idx)
  return y, idx


def _window_views(a, k):
  """The k*k strided views [N,H/k,W/k,C] of the non-overlapping k x k windows of a [N,H,W,C], row-major."""
  aw = _windows(a, k)
  return [aw[:, :, t // k, :, t % k, :] for t in range(k * k)]


def _after(x, g):
  """x, made data-dependent on the cotangent g without changing it (unless g holds a NaN, where the gradient is
  NaN anyway): XLA would otherwise schedule backward-pass recomputations from forward values (im2col,
  shifted copies) early in the forward pass, or merge them with the forward's own (CSE), and keep their
  results alive in between. XLA:CPU removes `optimization_barrier`s before it gets there."""
  g0 = g.reshape(-1)[0]
  b = _as_bits(x)
  return _from_bits(jnp.where(g0 == g0, b, jnp.zeros((), b.dtype)), x.dtype)


def _round_to(a, dtype):
  """float32 a rounded to `dtype`'s precision, kept in float32 (bfloat16: reduce_precision to 8 exponent and
  7 mantissa bits, round-to-nearest-even, as a cast to bfloat16 and back). XLA:CPU emulates bf16 arithmetic
  op by op (convert, op, convert), so the elementwise work stays in float32 on rounded values."""
  if jnp.dtype(dtype) == jnp.dtype(jnp.bfloat16):
    return jax.lax.reduce_precision(a, exponent_bits=8, mantissa_bits=7)
  return a


def _bn_act(spec, z, mean, inv, scale, bias):
  """The block's elementwise tail before the pool, in float32 on values rounded as in the compute dtype:
  BN (float32) -> rounded to the compute dtype -> activation (a leaky product rounded again)."""
  dtype = jnp.dtype(spec.dtype)
  a = _f32(z)
  if spec.bn:
    a = (a - mean) * inv
    if scale.shape[0]:
      a = a * scale + bias
  a = _round_to(a, dtype)
  if spec.act == 'relu':
    return jnp.maximum(a, 0.0)
  if spec.act == 'leaky':
    slope = float(dtype.type(spec.slope))  # the slope as the compute dtype holds it (a NumPy scalar: no tracing)
    return jnp.where(a > 0, a, _round_to(a * slope, dtype))
  return a


def _block_forward(spec, x, w, b, scale, bias, mean, var):
  """Returns (y, batch_mean, batch_var, residuals)."""
  dtype = jnp.dtype(spec.dtype)
  xc = x.astype(dtype)
  z, cols = _conv_forward(spec, xc, w)
  if b.shape[0]:
    z = z + _f32(b)
  z = z.astype(dtype)  # the unfused Conv's output dtype; kept for the backward pass
  if spec.bn == 'batch':
    mean, var = _batch_stats(_f32(z))
  inv = jax.lax.rsqrt(var + spec.eps) if spec.bn else None
  if spec.pool:  # the max of the k*k strided views: one elementwise pass (a reduce over window axes is slower)
    y = _first_max([_bn_act(spec, v, mean, inv, scale, bias) for v in _window_views(z, spec.pool)])[0]
  else:
    y = _bn_act(spec, z, mean, inv, scale, bias)
  y = y.astype(dtype)  # exact: the values are already rounded to dtype
  return y, mean, var, (xc, z, y, cols)


@functools.lru_cache(maxsize=None)
def _block_vjp(spec):

  @jax.custom_vjp
  def block(x, w, b, scale, bias, mean, var):
    return _block_forward(spec, x, w, b, scale, bias, mean, var)[:3]

  def fwd(x, w, b, scale, bias, mean, var):
    y, bm, bv, (xc, z, yk, cols) = _block_forward(spec, x, w, b, scale, bias, mean, var)
    zero = jnp.zeros((0,), x.dtype)  # carries x's dtype only
    return (y, bm, bv), (xc, z, yk, cols, w, b, scale, bias, mean, var, bm, bv, zero)

  def bwd(res, cts):
    xc, z, y, cols, w, b, scale, bias, mean_in, var_in, bm, bv, x_dtype = res
    mean, var = (bm, bv) if spec.bn == 'batch' else (mean_in, var_in)
    inv = jax.lax.rsqrt(var + spec.eps) if spec.bn else None
    gy = _f32(cts[0])
    z = _after(z, gy)  # recomputations from z belong to the backward pass (no CSE with the forward's)
    # Cotangent of the activation's input at the (pooled) output positions; the activation's slope there
    # follows from the sign of the output (a > 0 <=> y > 0).
    if spec.act == 'relu':
      ga = jnp.where(y > 0, gy, 0.0)
    elif spec.act == 'leaky':
      ga = jnp.where(y > 0, gy, gy * spec.slope)
    else:
      ga = gy
    xhat = lambda zz: (_f32(zz) - mean) * inv
    c = z.shape[-1]
    n = z.size // c
    none = jnp.zeros((0,), jnp.float32)
    dscale, dbias = none, none
    if spec.pool:
      # The pool sends each window's gradient to its first maximum (recomputed from z: BN -> activation ->
      # first max of the k*k views, elementwise). The BN sums only involve those positions: they run over
      # the pooled grid, reading each window's k*k values of z once.
      k = spec.pool
      views = _window_views(z, k)
      idx = _first_max([_bn_act(spec, v, mean, inv, scale, bias) for v in views])[1]
      if spec.bn:
        xh_at = xhat(views[0])
        for t in range(1, k * k):
          xh_at = jnp.where(idx == t, xhat(views[t]), xh_at)
        dbeta, dgamma = _channel_sums(ga, ga * xh_at)
      shape6 = _windows(z, k).shape
      pos = (jax.lax.broadcasted_iota(jnp.int32, shape6, 2) * k + jax.lax.broadcasted_iota(jnp.int32, shape6, 4))
      g = jnp.where(pos == idx[:, :, None, :, None, :], ga[:, :, None, :, None, :], 0.0).reshape(z.shape)
    else:
      g = ga
      if spec.bn:
        dbeta, dgamma = _channel_sums(g, g * xhat(z))
    if spec.bn:
      gamma = scale if scale.shape[0] else jnp.ones((c,), jnp.float32)
      if scale.shape[0]:
        dscale, dbias = dgamma, dbeta
      if spec.bn == 'batch':
        dz = (gamma * inv) * (g - dbeta / n - xhat(z) * (dgamma / n))
        db = jnp.zeros((c,), jnp.float32)  # the batch mean cancels the conv bias: its gradient is exactly 0
      else:
        dz = g * (gamma * inv)
        db = gamma * inv * dbeta
    else:
      dz = g
      db = _channel_sums(ga)[0]
    dx, dw = _conv_backward(spec, _after(xc, gy), w, dz, cols)
    grads = (dx.astype(x_dtype.dtype), dw.astype(w.dtype), db.astype(b.dtype) if b.shape[0] else b,
             dscale if scale.shape[0] else scale, dbias if bias.shape[0] else bias,
             jnp.zeros_like(mean_in), jnp.zeros_like(var_in))
    return grads

  block.defvjp(fwd, bwd)
  return block
