"""Gaussian receptive-field upsampling of 64 heatmaps 28x28 -> 224x224 (r=62, j=8, s=3.5, sigma=12):
fcdd_jax (separable matmuls, jit) vs the reference's transposed convolution in PyTorch.

  python -m bench.upsample [--n 64] [--steps 20]
"""
import argparse

import numpy as np

from bench import common


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument('--n', type=int, default=64)
  p.add_argument('--steps', type=int, default=20)
  a = p.parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  from fcdd_jax.models import receptive  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(0).random((a.n, 28, 28)).astype(np.float32)
  rec = receptive.Reception(62, 8, 3.5)
  fn = jax.jit(lambda h: receptive.upsample(h, rec, 224, 12.0))
  xj = jax.numpy.asarray(x)
  jax.block_until_ready(fn(xj))
  t_jax = common.median_time(lambda: jax.block_until_ready(fn(xj)), a.steps)
  common.emit(impl='jax', net='upsample r62', batch=a.n, seconds=round(t_jax, 5),
              img_per_s=round(a.n / t_jax, 1), device_kind=common.cpu_kind())
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from bench import torch_nets  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  up = torch_nets.upsample_transposed(torch.zeros(1, 1, 28, 28), 62, 8, 3.5, 224, 12.0)
  xt = torch.from_numpy(x)[:, None]
  t_t = common.median_time(lambda: up(xt), a.steps)
  diff = float(np.abs(up(xt)[:, 0].numpy() - np.asarray(fn(xj))).max())
  common.emit(impl='torch', net='upsample r62 (transposed conv)', batch=a.n, seconds=round(t_t, 5),
              img_per_s=round(a.n / t_t, 1), device_kind=common.cpu_kind(), max_abs_diff_vs_jax=diff,
              jax_speedup=round(t_t / t_jax, 2))


if __name__ == '__main__':
  main()
