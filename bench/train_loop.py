"""The training loop with the real input pipeline vs the bare compiled step, in one process.

  python -m bench.train_loop --root DIR [--net FCDD_CNN224_VGG_NOPT] [--batch 32] [--steps 6]
                             [--dtype float32|bfloat16] [--pipeline_batches 4] [--include_padded]

In this order, in one process (so that load from other processes is bracketed):
1. `bench.train_step`: median seconds of the bare compiled train step (random inputs, no pipeline);
2. the input pipeline alone: `--pipeline_batches` training batches pulled from `pipeline.train_batches`
   (its own thread pool and prefetch, nothing else running in the process): wall and CPU seconds per batch;
3. `train.train_and_evaluate` with the custom config (`configs/custom.py`) on an MVTec-layout folder (e.g.
   the shared bottle, 256² images: confetti anomalies at the original resolution, colour jitter, crops/flips,
   ground-truth maps when the folder has masks) for `--steps + 1` steps; its own `train_images_per_second`
   (compile step excluded) is read from results.json. The timed steps stay within the first epoch's full
   batches (at most --steps): the epoch's padded last batch carries a `valid` mask, a second input structure
   that the loop compiles anew when it first meets it (--include_padded times it too);
4. the bare step again.
Both run on the allocator `fcdd_jax.main` uses (mimalloc on CPU hosts). Prints one JSON line per measurement
and a `ratio` line: loop img/s / bare step img/s (mean of 1 and 4; target >= 0.9: the pipeline, host
transfers and logging must cost <= 10 %), with `predicted_if_pipeline_competes`: the ratio expected when the
pipeline's CPU time per batch is taken from the step's cores (step / (step + pipeline CPU s / cores)).

--root defaults to ../shared/data/mvtec_bottle_256/bottle next to the repository (or $FCDD_SHARED_DATA/
mvtec_bottle_256/bottle); pass it explicitly when running from a copy of the repository.
"""
import argparse
import os
import resource
import tempfile
import time

from bench import common

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOTTLE = os.path.join(os.environ.get('FCDD_SHARED_DATA', os.path.join(os.path.dirname(_REPO), 'shared', 'data')),
                      'mvtec_bottle_256', 'bottle')


def custom_config():
  """`configs/custom.py`'s config (the package's copy where the configs live in `fcdd_jax.configs`)."""
  try:
    from fcdd_jax.configs import custom  # pylint: disable=g-import-not-at-top
  except ImportError:
    from configs import custom  # pylint: disable=g-import-not-at-top
  return custom.get_config()


def _config(root, net, batch, steps, dtype, workdir):
  c = custom_config()
  c.data.root = root
  c.data.cache_dir = os.path.join(workdir, 'cache')
  c.model.name = net
  c.model.dtype = dtype
  c.batch_size = batch
  c.num_train_steps = steps + 1
  c.log_every_steps = steps + 1
  c.eval.train_heatmaps = False
  return c


def _cpu_seconds():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def pipeline_rate(config, batches):
  """Wall and CPU seconds per training batch of the real input pipeline, nothing else running."""
  from fcdd_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  pipe = input_pipeline.create(config)
  it = pipe.train_batches(0)
  next(it)                               # first batch: thread pool start, caches
  t, c = time.perf_counter(), _cpu_seconds()
  for _ in range(batches):
    next(it)
  return (time.perf_counter() - t) / batches, (_cpu_seconds() - c) / batches, pipe.info


def loop_rate(config, workdir):
  from fcdd_jax.pipeline import train  # pylint: disable=g-import-not-at-top
  res = train.train_and_evaluate(config, os.path.join(workdir, 'run'))
  return res['train_images_per_second'], res


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--root', default=BOTTLE)
  p.add_argument('--net', default='FCDD_CNN224_VGG_NOPT')
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--steps', type=int, default=6)
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  p.add_argument('--pipeline_batches', type=int, default=4)
  p.add_argument('--include_padded', action='store_true',
                 help='let the loop run into the first epoch\'s padded last batch (and its second compile)')
  a = p.parse_args()
  if not os.path.isdir(a.root):
    p.error(f'--root={a.root} is not a directory (an MVTec-layout folder: train/good, test/<defect>)')
  from fcdd_jax.utils import memory  # pylint: disable=g-import-not-at-top
  memory.exec_with_allocator('auto')   # as fcdd_jax.main runs: mimalloc on CPU hosts (all measurements)
  from bench import train_step  # pylint: disable=g-import-not-at-top
  before = train_step.measure(a.net, a.batch, a.steps, a.dtype)
  with tempfile.TemporaryDirectory() as d:
    cfg = _config(a.root, a.net, a.batch, a.steps, a.dtype, d)
    wall, cpu, info = pipeline_rate(cfg, a.pipeline_batches)
    full = info.num_train // a.batch                 # full batches of the first epoch
    if not a.include_padded and a.steps + 1 > full:
      if full < 3:
        p.error(f'--root={a.root}: {info.num_train} training images give {full} full batches of {a.batch}; '
                'need >= 3 (or pass --include_padded)')
      common.emit(impl='note', what=f'--steps {a.steps} -> {full - 1}: the first epoch has {full} full batches')
      a.steps = full - 1
      cfg.num_train_steps = cfg.log_every_steps = a.steps + 1
    common.emit(impl='pipeline', net=a.net, batch=a.batch, dtype=a.dtype, wall_s_per_batch=round(wall, 3),
                cpu_s_per_batch=round(cpu, 3), img_per_s=round(a.batch / wall, 2), load=common.load_avg())
    rate, res = loop_rate(cfg, d)
  common.emit(impl='loop', net=a.net, batch=a.batch, dtype=a.dtype, img_per_s=rate, timed_steps=a.steps,
              peak_rss_bytes=res.get('peak_rss_bytes'), compile_s=res.get('compile_seconds'),
              train_s=res.get('train_seconds'), load=common.load_avg())
  after = train_step.measure(a.net, a.batch, a.steps, a.dtype)
  bare = (before['img_per_s'] + after['img_per_s']) / 2
  step_s = a.batch / bare
  cores = len(os.sched_getaffinity(0))
  common.emit(impl='ratio', what='loop / bare step', net=a.net, batch=a.batch, dtype=a.dtype,
              value=round(rate / bare, 3), vs_before=round(rate / before['img_per_s'], 3),
              vs_after=round(rate / after['img_per_s'], 3),
              predicted_if_pipeline_competes=round(step_s / (step_s + cpu / cores), 3), cores=cores,
              load=common.load_avg())


if __name__ == '__main__':
  main()
