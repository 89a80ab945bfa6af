"""Convolutions for XLA:CPU: stride-1 NHWC convs as bfloat16 GEMMs (`gemm_conv`, custom VJP), and the
per-layer plan of how a fused block's conv and its two gradients are computed (`conv_plan`, `conv_forward`,
`conv_backward`; the blocks themselves are `fused_block.conv_block`).

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

import jax
import jax.numpy as jnp

from fcdd_jax.models.cpu import onednn


def is_static(dims):
  """Whether every dimension is a Python int: not a symbolic dimension of a `jax.export` with polymorphic shapes
  (whose sizes cannot be compared at trace time). The one test for it: which conv runs (`layers.use_gemm_conv`,
  `layers.use_onednn_conv`) and whether an im2col is small enough to keep (`conv_forward`)."""
  return all(isinstance(d, int) for d in dims)


def as_bits(x):
  """Same-width unsigned-integer view of x: XLA:CPU upcasts bfloat16 data movement (pad, slice,
  concatenate, transpose) to float32 and back, which makes a bfloat16 im2col ~4x slower than a uint16 one."""
  if x.dtype.itemsize == 2 and jnp.issubdtype(x.dtype, jnp.floating):
    return jax.lax.bitcast_convert_type(x, jnp.uint16)
  return x


def from_bits(b, dtype):
  return jax.lax.bitcast_convert_type(b, dtype) if b.dtype != dtype else b


def im2col(x, k, pad):
  """[N,H,W,C] -> [N,H',W',k*k*C] with H' = H + 2 pad - k + 1, columns ordered (i, j, c) like HWIO."""
  n, h, w, c = x.shape
  oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
  b = as_bits(x)
  if pad:
    b = jnp.pad(b, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  if k > 1:
    b = jnp.concatenate([b[:, i:i + oh, j:j + ow, :] for i in range(k) for j in range(k)], axis=-1)
  return from_bits(b, x.dtype)


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
# The conv of a fused block (`fused_block.conv_block`): forward and both gradients, per-layer plan

def conv_plan(conv, k, ci, co, hw):
  """How a block's stride-1 conv and its two gradients are computed: (forward, input gradient, weight
  gradient), each one of
    'xla'    XLA's convolution (on CPU: YNNPACK's, in float32 even for bf16 operands),
    'gemm'   one GEMM over an im2col ([R, k*k*C] @ [k*k*C, C']; bf16 operands on CPU, float32 accumulation),
    'taps'   weight gradient as k*k GEMMs dz^T @ x_tap over shifted copies of x (no k*k-wide im2col),
    'cols_t' weight gradient colsT @ dz over a transposed im2col of x (first layers: x has 1-3 channels),
    'filter' XLA's backward-filter convolution,
    'onednn' oneDNN's convolution primitives (`fcdd_jax.models.cpu.onednn`, XLA FFI custom calls).
  `conv` is the block's family ('gemm': bf16 GEMMs on XLA:CPU; 'xla': XLA convolutions; 'onednn'), hw the output's
  H*W. Measured per layer of FCDD_CNN224_VGG_NOPT at batch 32 (bench/README.md): an im2col costs about as
  much as its GEMM when the GEMM's output has <= 128 channels at >= 56x56 pixels, where YNNPACK's float32
  convolution is the faster one; the k*k tap GEMMs beat one GEMM over the k*k-wide im2col (half the copies)."""
  if conv == 'onednn':
    return 'onednn', 'onednn', 'onednn'
  if conv == 'gemm':
    fwd = 'xla' if co <= 128 and ci >= 8 and hw >= 56 * 56 else 'gemm'
    dx = 'xla' if ci <= 128 and co >= 8 and hw >= 56 * 56 else 'gemm'
    dw = 'cols_t' if ci <= 4 else ('taps' if k == 3 and ci >= 32 else 'gemm')
    return fwd, dx, dw
  return 'xla', 'xla', 'cols_t' if ci <= 4 else ('taps' if k == 3 and ci >= 32 else 'filter')


def _f32(a):
  return a.astype(jnp.float32)


def _lax_conv(x, w, pad):
  return jax.lax.conv_general_dilated(x, w, (1, 1), [(pad, pad)] * 2, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      preferred_element_type=jnp.float32)


def _plan(spec, w, z_shape):
  if spec.plan is not None:
    return spec.plan
  k, _, ci, co = w.shape
  return conv_plan(spec.conv, k, ci, co, z_shape[1] * z_shape[2])


KEEP_COLS_BYTES = 192 * 2 ** 20  # a forward im2col up to this size is kept for the weight gradient


def conv_forward(spec, xc, w):
  """(float32 [N,H',W',Cout] conv of xc (already in the compute dtype) with w, im2col kept for the backward
  pass or None) for a block `spec` (a `fused_block.BlockSpec`: its pad, dtype, conv and plan are used). An
  im2col is kept when the weight gradient is its GEMM too and it is small (KEEP_COLS_BYTES): recomputing it
  costs more than it saves on small nets (FCDD_CNN28_W's 5x5 layer: 160 MB at batch 128); the large ones of
  the 224^2 nets are recomputed."""
  dtype = jnp.dtype(spec.dtype)
  k = w.shape[0]
  oh, ow = xc.shape[1] + 2 * spec.pad - k + 1, xc.shape[2] + 2 * spec.pad - k + 1
  fwd, _, dw = _plan(spec, w, (0, oh, ow))
  if fwd == 'onednn':
    return onednn.conv_fwd(xc, w, None, spec.pad), None
  if fwd == 'gemm':
    y, cols = _fwd_impl(xc, w, spec.pad, dtype)
    keep = (dw == 'gemm' and is_static(cols.shape)   # an export's symbolic batch: size unknown, not kept
            and cols.size * cols.dtype.itemsize <= KEEP_COLS_BYTES)
    return y, (cols if keep else None)
  return _lax_conv(xc, w.astype(dtype), spec.pad), None


def conv_forward_biased(spec, xc, w, b):
  """(z = conv(xc, w) + b rounded to the compute dtype, cols) of `conv_forward`; b [Cout] or shape (0,). On
  oneDNN the bias and the rounding are the primitive's (float32 accumulation + bias, one rounding: the same
  values), so no float32 z is written and read back."""
  dtype = jnp.dtype(spec.dtype)
  if _plan(spec, w, (0, 1, 1))[0] == 'onednn':
    return onednn.conv_fwd(xc, w, b if b.shape[0] else None, spec.pad, dtype), None
  z, cols = conv_forward(spec, xc, w)
  if b.shape[0]:
    z = z + b.astype(jnp.float32)
  return z.astype(dtype), cols


def conv_backward(spec, xc, w, dz, cols=None):
  """(dx in the compute dtype, dw float32) of the conv of `conv_forward` for cotangent dz (float32 [N,H',W',Cout]).
  xc arrives tied to the cotangent (`fused_block`'s `_after`): what is recomputed from it here (im2col, shifted copies)
  is neither merged with the forward pass's (CSE) nor scheduled early and kept alive in between. The input
  gradient of a first layer is the image's and never needed in training: XLA drops it."""
  dtype = jnp.dtype(spec.dtype)
  k, _, ci, co = w.shape
  _, dx_how, dw_how = _plan(spec, w, dz.shape)
  dzc = dz.astype(dtype)
  if dx_how == 'onednn':
    dx = onednn.conv_bwd_data(dzc, w, spec.pad, xc.shape, dtype)
  elif dx_how == 'gemm':
    dx = _conv_input_grad(dz, w, spec.pad, dtype, xc.shape)
  else:  # a forward conv of dz with the flipped, transposed kernel (padding k-1-pad; crop when negative)
    bp = k - 1 - spec.pad
    dx = _lax_conv(dzc, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2).astype(dtype), max(bp, 0))
    if bp < 0:
      dx = dx[:, -bp:-bp + xc.shape[1], -bp:-bp + xc.shape[2], :]
  if dw_how == 'onednn':
    dw = onednn.conv_bwd_weights(xc, dzc, k, spec.pad)
  elif dw_how == 'cols_t':
    # colsT @ dz: dz is used in its own layout. (dz^T @ cols makes XLA fuse the whole dz computation into a
    # transposing copy with strided reads: 0.6 s of a 7.6 s FCDD_CNN224_VGG_NOPT bf16 step.)
    dw = _wgrad_transposed(xc, dz, k, spec.pad, dtype)
  elif dw_how == 'gemm':  # dz^T @ im2col(x), as gemm_conv (the forward's im2col when kept)
    dw = _bwd_impl(im2col(xc, k, spec.pad) if cols is None else cols, w, dtype, dz, spec.pad, dtype)[1]
  elif dw_how == 'taps':
    p = spec.pad
    xp = as_bits(jnp.pad(as_bits(xc), ((0, 0), (p, p), (p, p), (0, 0))))
    oh, ow = dz.shape[1], dz.shape[2]
    if dtype == jnp.dtype(jnp.bfloat16):
      # canonical [Cout, R] @ [R, Cin] dots (the bf16 GEMM takes no transposed operand; a transpose next to
      # a dot is folded into it): the [k*k, Cout, Cin] stack is transposed as a whole afterwards
      dzt = jnp.transpose(dzc, (3, 0, 1, 2)).reshape(co, -1)
      taps = [_mm(dzt, from_bits(xp[:, i:i + oh, j:j + ow, :], dtype).reshape(-1, ci))
              for i in range(k) for j in range(k)]
      dw = jnp.stack(taps).reshape(k, k, co, ci).transpose(0, 1, 3, 2)
    else:
      dzf = dzc.reshape(-1, co)
      taps = [_mm(from_bits(xp[:, i:i + oh, j:j + ow, :], dtype).reshape(-1, ci).T, dzf)
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
  bt = jnp.transpose(as_bits(x), (3, 0, 1, 2))
  bt = jnp.pad(bt, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
  cols_t = jnp.concatenate([bt[:, :, i:i + oh, j:j + ow] for i in range(k) for j in range(k)], axis=0)
  cols_t = from_bits(cols_t, x.dtype).reshape(k * k * ci, -1)
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
