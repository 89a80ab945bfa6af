"""The input pipeline's share: train steps/s with the real pipeline vs a cached in-memory batch, for
FCDD_CNN32_LW3K on CIFAR-10 (batch 200), in one run.

  python -m bench.pipeline --root /path/to/cifar10_folders [--steps 10] [--oe_root DIR]

`--root` holds train/<class>/*, test/<class>/* (extract ../shared/data/cifar10_jpg.tar.gz). OE: images of
--oe_root (default: the CIFAR-10 'dog' training folder, standing in for CIFAR-100).
"""
import argparse
import functools
import os
import time

from bench import common


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--root', required=True)
  p.add_argument('--oe_root', default='')
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--batch', type=int, default=200)
  a = p.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  from fcdd_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from fcdd_jax.pipeline import run
  from fcdd_jax.pipeline import steps
  from fcdd_jax.configs import cifar10  # pylint: disable=g-import-not-at-top
  cfg = cifar10.get_config()
  cfg.data.root = a.root
  cfg.data.noise_mode = 'folder'
  cfg.data.oe_root = a.oe_root or os.path.join(a.root, 'train', 'dog')
  cfg.batch_size = a.batch
  pipe = input_pipeline.create(cfg)
  built = run.build_run(cfg, pipe.info, pipe.info.steps_per_epoch)
  state = built.init_state(jax.random.PRNGKey(0))
  step = jax.jit(functools.partial(steps.train_step, cfg=built.step_config), donate_argnums=(0,))
  key = jax.random.PRNGKey(1)
  it = input_pipeline.start_global(pipe, built.data_sharding)
  cached = next(it)
  state, m = step(state, cached, key)
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(a.steps):
    state, m = step(state, cached, key)
  jax.block_until_ready(m)
  cached_rate = a.steps / (time.perf_counter() - t)
  t = time.perf_counter()
  for _ in range(a.steps):
    state, m = step(state, next(it), key)
  jax.block_until_ready(m)
  real_rate = a.steps / (time.perf_counter() - t)
  t = time.perf_counter()
  for s in range(a.steps):
    pipe.train_batch(1000 + s)
  build_rate = a.steps / (time.perf_counter() - t)
  common.emit(impl='jax', net='FCDD_CNN32_LW3K', batch=a.batch, what='pipeline', steps_per_s_cached=round(cached_rate, 3),
              steps_per_s_real=round(real_rate, 3), ratio_real_vs_cached=round(real_rate / cached_rate, 3),
              pipeline_only_batches_per_s=round(build_rate, 2), device_kind=common.cpu_kind(), load=common.load_avg())


if __name__ == '__main__':
  main()
