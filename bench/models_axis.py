"""Throughput summed over models when 1, 2, 4, 8 models train as one program (vmap over a leading model
axis, as `config.runs` does), on synthetic batches.

  python -m bench.models_axis [--net FCDD_CNN28_W] [--batch 64] [--models 1,2,4,8] [--steps 3]
"""
import argparse
import functools
import time

from bench import common


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--net', default='FCDD_CNN28_W')
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--models', default='1,2,4,8')
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--mode', default='both', choices=['both', 'vmap', 'map', 'unroll'])
  a = p.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  from fcdd_jax.pipeline import steps  # pylint: disable=g-import-not-at-top
  built, _, shape = common.build_run(a.net)
  scfg = built.step_config
  make = jax.jit(built.make_state)
  for mode in (['vmap', 'unroll'] if a.mode == 'both' else [a.mode]):
    _measure(a, mode, make, scfg, shape, steps)


def _measure(a, mode, make, scfg, shape, steps):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  base = None
  for m in [int(x) for x in a.models.split(',')]:
    states = jax.tree.map(lambda *xs: jnp.stack(xs), *[make(jax.random.PRNGKey(i)) for i in range(m)])
    fn = functools.partial(steps.train_step, cfg=scfg)
    if mode == 'vmap':
      step = jax.jit(jax.vmap(fn), donate_argnums=(0,))
    elif mode == 'map':
      step = jax.jit(lambda s, b, k: jax.lax.map(lambda x: fn(*x), (s, b, k)), donate_argnums=(0,))
    else:
      from fcdd_jax.pipeline import multirun  # pylint: disable=g-import-not-at-top
      step = jax.jit(functools.partial(multirun.unrolled, fn), donate_argnums=(0,))
    rng = np.random.default_rng(0)
    batch = {'image': jnp.asarray(rng.normal(size=(m, a.batch) + shape), jnp.float32),
             'label': jnp.asarray(np.tile(np.arange(a.batch) % 2, (m, 1)), jnp.int32)}
    keys = jax.random.split(jax.random.PRNGKey(1), m)
    t = time.perf_counter()
    compiled = step.lower(states, batch, keys).compile()
    compile_s = time.perf_counter() - t
    holder = {'s': states}
    def run():
      holder['s'], met = compiled(holder['s'], batch, keys)
      jax.block_until_ready(met['loss'])
    sec = common.median_time(run, a.steps, warmup=1)
    ips = m * a.batch / sec
    base = base or ips
    common.emit(impl='jax', net=a.net, batch=a.batch, models=m, mode=mode, img_per_s=round(ips, 2),
                speedup_vs_1_model=round(ips / base, 3), compile_s=round(compile_s, 2),
                device_kind=common.cpu_kind(), load=common.load_avg())


if __name__ == '__main__':
  main()
