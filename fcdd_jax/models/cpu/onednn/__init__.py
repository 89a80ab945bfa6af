"""Stride-1 NHWC convolutions on oneDNN through XLA FFI custom calls (XLA:CPU on Linux x86_64).

The kernels PyTorch's CPU convolutions use (oneDNN's brgconv / jit convolutions: AVX-512, AVX512-BF16, AMX
where the CPU has them) are called from jitted programs as three FFI custom calls (`onednn_conv.cc`, built
by `pip install` as `fcdd_jax/models/cpu/onednn/_onednn_conv*.so` against the `onednn-devel-cpu-gomp` wheel, linked
to `onednn-cpu-gomp`'s `libdnnl.so.3`):

  conv_fwd(x, w, b, pad, out_dtype)          y  [N,Ho,Wo,Co]  (float32 accumulation, optional float32 bias)
  conv_bwd_data(dy, w, pad, x_shape, dtype)  dx [N,H,W,Ci]
  conv_bwd_weights(x, dy, k, pad)            dw [k,k,Ci,Co] float32

x / dy in float32 or bfloat16 (NHWC), w float32 HWIO (a bf16 conv rounds it to bf16 in oneDNN's weight
reorder, like `w.astype(bfloat16)`). `conv` is the custom-VJP convolution built from them (`layers.Conv`);
the fused blocks call the three ops directly (`cpu_conv.conv_forward` / `conv_backward`, plan 'onednn'). The same
extension holds the fused blocks' BN-activation-pool tail (`block_tail`). Every call runs on one thread of the
extension's own, the master of oneDNN's one OpenMP team (`runtime.h`; `set_thread_mode` for A/B benchmarks).

Which path runs: `conv_impl()`, from the environment variable FCDD_CONV_IMPL = auto | xla | onednn (an
environment variable, not a config field, so that it also reaches benchmarks, export and tests without a
config). `auto` (default) uses oneDNN on XLA:CPU with one device when the extension loads, else XLA (the custom
calls have no sharding rule); `onednn` forces it (several devices: unpartitioned) and raises where it cannot run; `xla` never loads it. The choice (and a reason when oneDNN is unavailable) is said once on stderr.
"""
import ctypes
import functools
import glob
import importlib.machinery
import importlib.metadata
import os
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

ENV = 'FCDD_CONV_IMPL'
CHOICES = ('auto', 'xla', 'onednn')
DEFAULT = 'auto'   # FCDD_CONV_IMPL unset: oneDNN where it loads (faster in every measured step, bench/README.md)
_TARGETS = {'fcdd_onednn_conv_fwd': 'FcddOnednnConvFwd', 'fcdd_onednn_conv_bwd_data': 'FcddOnednnConvBwdData',
            'fcdd_onednn_conv_bwd_weights': 'FcddOnednnConvBwdWeights',
            'fcdd_block_tail_fwd': 'FcddBlockTailFwd', 'fcdd_block_tail_bwd': 'FcddBlockTailBwd'}
_DTYPES = ('float32', 'bfloat16')
_state = {'lib': None, 'error': None, 'loaded': False, 'logged': None}


def _libdnnl_candidates():
  """Paths where onednn-cpu-gomp's libdnnl.so.3 may be: the wheel's recorded files, then <prefix>/lib."""
  out = []
  try:
    for f in importlib.metadata.files('onednn-cpu-gomp') or ():
      if f.name.startswith('libdnnl.so'):
        out.append(str(f.locate()))
  except importlib.metadata.PackageNotFoundError:
    pass
  for prefix in (sys.prefix, sys.base_prefix):
    out.append(os.path.join(prefix, 'lib', 'libdnnl.so.3'))
  return [p for p in dict.fromkeys(out) if os.path.exists(p)]


def _extension_path():
  here = os.path.dirname(os.path.abspath(__file__))
  for suffix in importlib.machinery.EXTENSION_SUFFIXES:
    hits = glob.glob(os.path.join(here, '_onednn_conv' + suffix))
    if hits:
      return hits[0]
  return None


def load():
  """Loads the extension and registers its FFI targets once; returns True when it is usable. The reason it
  is not is in `unavailable_reason()`."""
  if _state['loaded']:
    return _state['lib'] is not None
  _state['loaded'] = True
  try:
    if not sys.platform.startswith('linux') or platform.machine().lower() not in ('x86_64', 'amd64'):
      raise RuntimeError(f'oneDNN convolutions are built for Linux x86_64 only (this is {sys.platform} '
                         f'{platform.machine()})')
    ext = _extension_path()
    if ext is None:
      raise RuntimeError('the extension fcdd_jax/models/cpu/onednn/_onednn_conv*.so was not built (pip install -e . builds '
                         'it when a C++ compiler and the onednn-devel-cpu-gomp wheel are available)')
    libs = _libdnnl_candidates()
    if libs:  # resolves the extension's DT_NEEDED libdnnl.so.3 by soname, whatever its rpath
      ctypes.CDLL(libs[0], mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(ext)
    for name, symbol in _TARGETS.items():
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform='cpu')
    lib.fcdd_onednn_info.restype = ctypes.c_char_p
    _state['lib'] = lib
  except (OSError, RuntimeError, AttributeError) as e:
    _state['error'] = f'{type(e).__name__}: {e}'
  return _state['lib'] is not None


def set_thread_mode(own_thread):
  """True (default): the custom calls run on the extension's own thread; False: on XLA's calling threads (each
  then the master of an OpenMP team of its own; for A/B benchmarks, `runtime.h`)."""
  if load():
    _state['lib'].fcdd_onednn_set_thread_mode(int(bool(own_thread)))


def unavailable_reason():
  load()
  return _state['error']


def info():
  """oneDNN's version and the ISA it dispatches to, or None when the extension is not loaded."""
  return _state['lib'].fcdd_onednn_info().decode() if load() else None


def requested():
  v = os.environ.get(ENV, DEFAULT).strip().lower() or DEFAULT
  if v not in CHOICES:
    raise ValueError(f'{ENV}={v!r}: expected one of {", ".join(CHOICES)}')
  return v


def conv_impl(backend=None):
  """'onednn' or 'xla': the convolution path of this process for `backend` (default: JAX's default backend).
  Said once on stderr (the first time a conv asks, and again only if it changes)."""
  req = requested()
  backend = backend or jax.default_backend()
  if req == 'xla':
    impl, why = 'xla', f'{ENV}=xla'
  elif backend != 'cpu':
    if req == 'onednn':
      raise RuntimeError(f'{ENV}=onednn: oneDNN convolutions run on XLA:CPU only; the backend is {backend}')
    impl, why = 'xla', f'backend {backend}'
  elif req == 'auto' and jax.device_count() > 1:
    # the custom calls have no sharding rule: in a program partitioned over several devices XLA would gather
    # their operands onto every device
    impl, why = 'xla', f'{jax.device_count()} devices: oneDNN runs unpartitioned programs only'
  elif load():
    impl, why = 'onednn', info() + ('' if supports('bfloat16') else
                                    '; bfloat16 convolutions on XLA: oneDNN has none for this CPU (no AVX-512)')
  else:
    if req == 'onednn':
      raise RuntimeError(f'{ENV}=onednn but the oneDNN extension is unavailable: {unavailable_reason()}')
    impl, why = 'xla', f'oneDNN unavailable: {unavailable_reason()}'
  if _state['logged'] != impl:
    _state['logged'] = impl
    print(f'fcdd_jax: convolutions: {impl} ({why})', file=sys.stderr, flush=True)
  return impl


BF16_CPU_FLAGS = ('avx512_bf16', 'amx_bf16')   # /proc/cpuinfo flags of bf16 dot products in hardware


@functools.lru_cache(maxsize=None)
def cpu_flags(path='/proc/cpuinfo'):
  """The first CPU's feature flags from /proc/cpuinfo (an empty set where there is none); read once per path
  (`run.compute_dtype` asks at every net it builds)."""
  try:
    with open(path) as f:
      for line in f:
        if line.startswith('flags'):
          return frozenset(line.split(':', 1)[1].split())
  except OSError:
    pass
  return frozenset()


def native_bf16(flags=None):
  """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX-BF16): there oneDNN's bf16
  convolutions run at about twice its float32 ones; elsewhere it emulates them and bf16 is no faster."""
  return bool(set(BF16_CPU_FLAGS) & (cpu_flags() if flags is None else set(flags)))


@functools.lru_cache(maxsize=None)
def supports(dtype_name):
  """Whether the loaded oneDNN has the convolutions of activations in `dtype_name` ('float32', 'bfloat16') on
  this CPU: it has no bfloat16 ones without AVX-512 (AVX2-only CPUs such as AMD Zen 3 and most laptops'), where
  creating one fails. Asked of oneDNN itself (`fcdd_onednn_supports`); an extension built before that probe
  existed is asked by the CPU flags instead."""
  if dtype_name not in _DTYPES or not load():
    return False
  probe = getattr(_state['lib'], 'fcdd_onednn_supports', None)
  if probe is None:
    return dtype_name == 'float32' or 'avx512bw' in cpu_flags()
  return bool(probe(int(dtype_name == 'bfloat16')))


def use_onednn(dtype, stride=1, backend=None):
  """Whether a conv in compute dtype `dtype` with `stride` runs on oneDNN in this process: where oneDNN has no
  convolutions of that dtype on this CPU (`supports`), XLA's run it, or with FCDD_CONV_IMPL=onednn a
  RuntimeError says so."""
  name = jnp.dtype(dtype).name
  if stride != 1 or name not in _DTYPES or conv_impl(backend) != 'onednn':
    return False
  if supports(name):
    return True
  if requested() == 'onednn':
    raise RuntimeError(f'{ENV}=onednn but oneDNN has no {name} convolutions on this CPU ({info()}); '
                       f'use float32 (--config.model.dtype=float32) or {ENV}=auto')
  return False


def _pad_attr(pad):
  return np.int64(pad)


def ffi_call(target, out):
  """jax.ffi.ffi_call of one of the extension's targets (`block_tail` uses it too); under vmap (several models as one
  program, `config.runs`) one custom call per mapped element."""
  return jax.ffi.ffi_call(target, out, vmap_method='sequential')


def conv_fwd(x, w, b=None, pad=0, out_dtype=jnp.float32):
  """y = conv(x, w) (+ b): x [N,H,W,Ci] (f32 | bf16), w [k,k,Ci,Co] (cast to float32), b [Co] or None;
  stride 1, zero padding `pad`, float32 accumulation, y in out_dtype."""
  n, h, wd, _ = x.shape
  k, co = w.shape[0], w.shape[3]
  out = jax.ShapeDtypeStruct((n, h + 2 * pad - k + 1, wd + 2 * pad - k + 1, co), jnp.dtype(out_dtype))
  b = jnp.zeros((0,), jnp.float32) if b is None else b.astype(jnp.float32)
  return ffi_call('fcdd_onednn_conv_fwd', out)(x, w.astype(jnp.float32), b, pad=_pad_attr(pad))


def conv_bwd_data(dy, w, pad, x_shape, out_dtype=None):
  """dx [x_shape] (out_dtype, default dy's) of conv_fwd for the cotangent dy [N,Ho,Wo,Co]."""
  out = jax.ShapeDtypeStruct(tuple(x_shape), jnp.dtype(out_dtype or dy.dtype))
  return ffi_call('fcdd_onednn_conv_bwd_data', out)(dy, w.astype(jnp.float32), pad=_pad_attr(pad))


def conv_bwd_weights(x, dy, k, pad):
  """dw [k,k,Ci,Co] float32 of conv_fwd for the cotangent dy (x and dy in one dtype)."""
  out = jax.ShapeDtypeStruct((k, k, x.shape[-1], dy.shape[-1]), jnp.float32)
  return ffi_call('fcdd_onednn_conv_bwd_weights', out)(x, dy.astype(x.dtype), pad=_pad_attr(pad))


def conv(x, w, pad, dtype=jnp.float32):
  """Stride-1 convolution of x [N,H,W,Cin] with w [k,k,Cin,Cout] (HWIO) in compute dtype `dtype` (float32
  accumulation), custom VJP on oneDNN. Returns float32 [N,H',W',Cout]; x's cotangent in x's dtype, w's in
  w's dtype (computed in float32)."""
  return _conv(int(pad), jnp.dtype(dtype).name)(x, w)


@functools.lru_cache(maxsize=None)
def _conv(pad, dtype_name):
  dtype = jnp.dtype(dtype_name)

  @jax.custom_vjp
  def f(x, w):
    return conv_fwd(x.astype(dtype), w, None, pad)

  def fwd(x, w):
    xc = x.astype(dtype)
    return conv_fwd(xc, w, None, pad), (xc, w, jnp.zeros((0,), x.dtype))

  def bwd(res, dy):
    xc, w, x_dtype = res
    dyc = dy.astype(dtype)
    dx = conv_bwd_data(dyc, w, pad, xc.shape, dtype).astype(x_dtype.dtype)
    dw = conv_bwd_weights(xc, dyc, w.shape[0], pad).astype(w.dtype)
    return dx, dw

  f.defvjp(fwd, bwd)
  return f
