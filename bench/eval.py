"""Images/s of the jit-compiled evaluation step (forward, pseudo-Huber, scores, Gaussian upsampling to
full size), as the engine runs it.

  python -m bench.eval [--net NAME] [--batch B] [--steps S]
"""
import argparse
import functools

from bench import common


def measure(net_name, batch, steps):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from fcdd_jax.pipeline import steps as steps_lib  # pylint: disable=g-import-not-at-top
  built, state, shape = common.build_run(net_name, steps_per_epoch=1)
  scfg = built.step_config
  fn = jax.jit(functools.partial(steps_lib.eval_step, cfg=scfg))
  b = {'image': jnp.asarray(np.random.default_rng(0).normal(size=(batch,) + shape), jnp.float32)}
  jax.block_until_ready(fn(state, b))
  sec = common.median_time(lambda: jax.block_until_ready(fn(state, b)), steps)
  return common.emit(impl='jax', net=net_name, batch=batch, img_per_s=round(batch / sec, 2), seconds=round(sec, 4),
                     device_kind=common.cpu_kind(), what='eval_step incl. upsampling', load=common.load_avg())


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--net', default=None)
  p.add_argument('--batch', type=int, default=None)
  p.add_argument('--steps', type=int, default=5)
  a = p.parse_args()
  for n in [a.net] if a.net else list(common.NETS):
    measure(n, a.batch or common.NETS[n], a.steps)


if __name__ == '__main__':
  main()
