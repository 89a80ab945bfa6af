"""Per-layer micro-benchmark: one stride-1 conv forward + both gradients, fcdd_jax variants vs PyTorch CPU,
measured alternately in the same process (seconds, medians).

  python -m bench.conv_micro [--steps S] [--only fwd|train]
"""
import argparse
import time

import numpy as np

from bench import common

LAYERS = [  # (name, N, H, W, Cin, Cout, k, pad)
    ('lw3k_256_256', 128, 16, 16, 256, 256, 3, 1),
    ('lw3k_128_256', 128, 16, 16, 128, 256, 3, 1),
    ('lw3k_256_128', 128, 8, 8, 256, 128, 3, 1),
    ('lw3k_3_128', 128, 32, 32, 3, 128, 3, 1),
    ('cnn28w_128_128_k5', 128, 14, 14, 128, 128, 5, 2),
    ('cnn28w_1_128_k5', 128, 28, 28, 1, 128, 5, 2),
    ('vgg_256_512', 16, 28, 28, 256, 512, 3, 1),
    ('vgg_512_512', 16, 28, 28, 512, 512, 3, 1),
    ('vgg_128_256', 16, 56, 56, 128, 256, 3, 1),
    # FCDD_CNN224_VGG_NOPT's layers at batch 8 (a quarter of its training batch)
    ('nopt_3_64', 8, 224, 224, 3, 64, 3, 1),
    ('nopt_64_128', 8, 112, 112, 64, 128, 3, 1),
    ('nopt_128_256', 8, 56, 56, 128, 256, 3, 1),
    ('nopt_256_256', 8, 56, 56, 256, 256, 3, 1),
    ('nopt_256_512', 8, 28, 28, 256, 512, 3, 1),
    ('nopt_512_512', 8, 28, 28, 512, 512, 3, 1),
]


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--layers', default=None)
  p.add_argument('--impls', default='xla_f32,xla_bf16,gemm_bf16,torch_nchw,torch_cl',
                 help='xla_f32, xla_bf16, model_f32, gemm_bf16, gemm_f32, onednn_f32, onednn_bf16, torch_nchw, torch_cl')
  a = p.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from fcdd_jax.models.cpu import cpu_conv  # pylint: disable=g-import-not-at-top
  from fcdd_jax.models import layers
  from fcdd_jax.models.cpu import onednn

  def lax_conv(x, w, pad, dt):
    return jax.lax.conv_general_dilated(x.astype(dt), w.astype(dt), (1, 1), [(pad, pad)] * 2,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                        preferred_element_type=jnp.float32)

  impls = a.impls.split(',')
  if any(i.startswith('onednn') and not onednn.load() for i in impls):   # registers the FFI targets
    raise SystemExit(f'--impls onednn_*: {onednn.unavailable_reason()}')
  for name, n, h, w, ci, co, k, pad in LAYERS:
    if a.layers and name not in a.layers.split(','):
      continue
    rng = np.random.default_rng(0)
    xn = rng.normal(size=(n, h, w, ci)).astype(np.float32)
    wn = (rng.normal(size=(k, k, ci, co)) / np.sqrt(k * k * ci)).astype(np.float32)
    fns = {}
    for impl in impls:
      if impl.startswith(('xla', 'gemm', 'model', 'onednn')):
        dt = jnp.bfloat16 if impl.endswith('bf16') else jnp.float32
        if impl == 'model_f32':  # the float32 path of layers.Conv: XLA conv, weight gradient as k*k GEMMs
          conv = lambda x, w, pad=pad: layers.conv_s1(x, w, pad)
        elif impl.startswith('xla'):
          conv = functools_partial(lax_conv, pad=pad, dt=dt)
        elif impl.startswith('onednn'):  # fcdd_jax.models.cpu.onednn: oneDNN primitives through XLA FFI
          conv = lambda x, w, pad=pad, dt=dt: onednn.conv(x, w, pad, dt)
        else:
          conv = lambda x, w, pad=pad, dt=dt: cpu_conv.gemm_conv(x, w, pad, dt)
        def loss(x, wt, conv=conv):
          y = conv(x, wt)
          return jnp.sum(y * y)
        g = jax.jit(jax.grad(loss, argnums=(0, 1)))
        x = jnp.asarray(xn).astype(dt)
        wt = jnp.asarray(wn)
        def run(g=g, x=x, wt=wt):
          jax.block_until_ready(g(x, wt))
        fns[impl] = run
      else:
        xt = torch.from_numpy(xn).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
        wt_ = torch.from_numpy(wn).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
        if impl == 'torch_cl':
          xt = xt.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
          wt_ = wt_.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
        def run(xt=xt, wt_=wt_):
          y = torch.nn.functional.conv2d(xt, wt_, padding=pad)
          (y * y).sum().backward()
          xt.grad = None
          wt_.grad = None
        fns[impl] = run
    for f in fns.values():
      f(); f()
    ts = {i: [] for i in fns}
    for _ in range(a.steps):
      for i, f in fns.items():
        t = time.perf_counter()
        f()
        ts[i].append(time.perf_counter() - t)
    med = {i: float(np.median(v)) for i, v in ts.items()}
    best_torch = min(v for i, v in med.items() if i.startswith('torch')) if any(
        i.startswith('torch') for i in med) else None
    common.emit(impl='conv_micro', layer=name, **{i: round(v, 4) for i, v in med.items()},
                **({'gemm_bf16_vs_best_torch': round(best_torch / med['gemm_bf16'], 2)}
                   if best_torch and 'gemm_bf16' in med else {}),
                device_kind=common.cpu_kind(), load=common.load_avg())


def functools_partial(f, **kw):
  return lambda x, w: f(x, w, **kw)


if __name__ == '__main__':
  main()
