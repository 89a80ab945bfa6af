"""GEMM throughput (GFLOP/s) of XLA:CPU (jnp.dot, float32 and bf16 x bf16 -> f32) and PyTorch CPU (float32
and bfloat16 torch.mm), measured alternately in one process: the peaks that bench.compare's achieved
GFLOP/s are put next to.

  python -m bench.gemm_peak [--shapes M,K,N;...] [--steps S]
"""
import argparse
import statistics
import time

import numpy as np

from bench import common

# A square GEMM and the conv GEMMs of FCDD_CNN224_VGG_NOPT at batch 32 (forward [R, 9 Cin] @ [9 Cin, Cout]).
SHAPES = ((4096, 4096, 4096), (100352, 2304, 256), (401408, 576, 128))


def measure(shapes, steps=3, impls=('jax_f32', 'jax_bf16', 'torch_f32', 'torch_bf16')):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  out = []
  for m, k, n in shapes:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), np.float32)
    b = rng.standard_normal((k, n), np.float32)
    fns = {}
    for impl in impls:
      if impl.startswith('jax'):
        dt = jnp.bfloat16 if impl.endswith('bf16') else jnp.float32
        f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
        xa, xb = jnp.asarray(a, dt), jnp.asarray(b, dt)
        fns[impl] = lambda f=f, xa=xa, xb=xb: jax.block_until_ready(f(xa, xb))
      else:
        dt = torch.bfloat16 if impl.endswith('bf16') else torch.float32
        ta, tb = torch.from_numpy(a).to(dt), torch.from_numpy(b).to(dt)
        fns[impl] = lambda ta=ta, tb=tb: torch.mm(ta, tb)
    for f in fns.values():
      f()
    ts = {i: [] for i in fns}
    for _ in range(steps):
      for i, f in fns.items():
        t = time.perf_counter()
        f()
        ts[i].append(time.perf_counter() - t)
    flop = 2.0 * m * k * n
    out.append(common.emit(impl='gemm_peak', shape=[m, k, n],
                           **{f'{i}_gflops': round(flop / statistics.median(v) / 1e9, 1) for i, v in ts.items()},
                           device_kind=common.cpu_kind(), threads=torch.get_num_threads(), load=common.load_avg()))
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--shapes', default=None, help='M,K,N;M,K,N')
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--impls', default='jax_f32,jax_bf16,torch_f32,torch_bf16')
  a = p.parse_args()
  shapes = SHAPES if not a.shapes else [tuple(int(v) for v in s.split(',')) for s in a.shapes.split(';')]
  measure(shapes, a.steps, a.impls.split(','))


if __name__ == '__main__':
  main()
