"""Median images/s of one compiled fcdd_jax train step (the engine's `steps.train_step`: forward, loss,
backward, SGD-Nesterov + coupled weight decay, BN statistics), compile time reported separately.

  python -m bench.train_step [--net NAME] [--batch B] [--steps S] [--dtype float32|bfloat16] [--keep_freed_memory]
                             [--remat auto|on|off] [--padded]

Also reports the compiled step's XLA temporary space (`temp_mb`, compiled.memory_analysis()) and the peak
resident set of the process (`peak_rss_mb`). `--padded` times the step of an epoch's padded last batch instead
(a quarter of the rows are padding: the batch carries `valid`, a second compiled program whose memory the
training run pays once per epoch; issue 12: it set the run's peak memory before it ran in the fused blocks).
"""
import argparse
import functools
import time

from bench import common


def remat_option(value):
  """'auto' | 'on' | 'off' -> the `remat` option of models.create (None = the model's default)."""
  return {'auto': None, 'on': True, 'off': False}[value]


def build(net_name, batch, dtype='float32', with_hlo=False, remat=None, padded=False):
  """Compiles the train step; returns (run, compile_s) where run() performs one step and blocks (and the
  compiled HLO text with `with_hlo`). run.temp_bytes: the compiled step's XLA temporary space. `remat`: the
  model option (None = default). `padded`: the batch's last quarter of rows is padding (`valid` = 0)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from fcdd_jax.pipeline import steps  # pylint: disable=g-import-not-at-top
  built, state, shape = common.build_run(net_name, dtype, **({} if remat is None else {'remat': remat}))
  scfg, frozen = built.step_config, built.frozen
  step = jax.jit(functools.partial(steps.train_step, cfg=scfg, frozen=frozen), donate_argnums=(0,))
  rng = np.random.default_rng(0)
  batch_data = {'image': jnp.asarray(rng.normal(size=(batch,) + shape), jnp.float32),
                'label': jnp.asarray(np.arange(batch) % 2, jnp.int32)}
  if padded:
    batch_data['valid'] = jnp.asarray(np.arange(batch) < batch - max(batch // 4, 1), jnp.float32)
  key = jax.random.PRNGKey(1)
  t = time.perf_counter()
  compiled = step.lower(state, batch_data, key).compile()
  compile_s = time.perf_counter() - t
  holder = {'state': state}
  def run():
    holder['state'], m = compiled(holder['state'], batch_data, key)
    jax.block_until_ready(m['loss'])
  try:
    run.temp_bytes = int(compiled.memory_analysis().temp_size_in_bytes)
  except (AttributeError, TypeError, NotImplementedError):
    run.temp_bytes = None
  return (run, compile_s, compiled.as_text()) if with_hlo else (run, compile_s)


def device_kind():
  import jax  # pylint: disable=g-import-not-at-top
  return f'{jax.devices()[0].device_kind} ({common.cpu_kind()})'


def measure(net_name, batch, steps, dtype='float32', remat=None, padded=False):
  import jax  # pylint: disable=g-import-not-at-top
  run, compile_s = build(net_name, batch, dtype, remat=remat, padded=padded)
  sec = common.median_time(run, steps, warmup=2)
  return common.emit(impl='jax', net=net_name, batch=batch, dtype=dtype, img_per_s=round(batch / sec, 2),
                     seconds=round(sec, 4), compile_s=round(compile_s, 2),
                     temp_mb=round(run.temp_bytes / 2**20, 1) if run.temp_bytes is not None else None,
                     peak_rss_mb=round(common.peak_rss() / 2**20, 1), remat=remat, padded=padded,
                     device_kind=device_kind(), jax=jax.__version__, load=common.load_avg())


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--net', default=None)
  p.add_argument('--batch', type=int, default=None)
  p.add_argument('--steps', type=int, default=None)
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  p.add_argument('--keep_freed_memory', action='store_true',
                 help='glibc mallopt: keep freed memory mapped (fcdd_jax.utils.memory.keep_freed_memory)')
  p.add_argument('--remat', default='auto', choices=['auto', 'on', 'off'],
                 help="models.create's remat option (fused conv-BN-activation-pool blocks; auto = the default)")
  p.add_argument('--padded', action='store_true',
                 help="the step of an epoch's padded last batch (a quarter of the rows padding, `valid`)")
  a = p.parse_args()
  if a.keep_freed_memory:
    from fcdd_jax.utils import memory  # pylint: disable=g-import-not-at-top
    memory.keep_freed_memory()
  for n in [a.net] if a.net else list(common.NETS):
    measure(n, a.batch or common.NETS[n], a.steps or (5 if '224' in n else 10), a.dtype, remat_option(a.remat),
            a.padded)


if __name__ == '__main__':
  main()
