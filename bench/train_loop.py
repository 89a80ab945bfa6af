"""The training loop with the real input pipeline vs the bare compiled step, in one process.

  python -m bench.train_loop [--root DIR] [--net FCDD_CNN224_VGG_NOPT] [--batch 32] [--steps 6]
                             [--dtype float32|bfloat16]

1. `bench.train_step`: median seconds of the bare compiled train step (random inputs, no pipeline).
2. `train.train_and_evaluate` with `configs/custom.py` on an MVTec-layout folder (default: the shared
   bottle, 256² images: confetti anomalies, colour jitter, crops/flips, ground-truth maps when the config
   uses them) for `--steps + 1` steps; its own `train_images_per_second` (compile step excluded) is read from
   results.json.
Both run on the allocator `fcdd_jax.main` uses (mimalloc on CPU hosts). Prints one JSON line per
measurement and a `ratio` line: loop img/s / bare step img/s (target >= 0.9: the
pipeline, host transfers and logging must cost <= 10 %).
"""
import argparse
import os
import tempfile

from bench import common

BOTTLE = os.path.join(os.path.dirname(common.ROOT), 'shared', 'data', 'mvtec_bottle_256', 'bottle')


def loop_rate(root, net, batch, steps, dtype, workdir):
  from configs import custom  # pylint: disable=g-import-not-at-top
  from fcdd_jax import train  # pylint: disable=g-import-not-at-top
  c = custom.get_config()
  c.data.root = root
  c.data.cache_dir = os.path.join(workdir, 'cache')
  c.model.name = net
  c.model.dtype = dtype
  c.batch_size = batch
  c.num_train_steps = steps + 1
  c.log_every_steps = steps + 1
  c.eval.train_heatmaps = False
  res = train.train_and_evaluate(c, os.path.join(workdir, 'run'))
  return res['train_images_per_second'], res


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--root', default=BOTTLE)
  p.add_argument('--net', default='FCDD_CNN224_VGG_NOPT')
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--steps', type=int, default=6)
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  a = p.parse_args()
  from fcdd_jax import memory  # pylint: disable=g-import-not-at-top
  memory.exec_with_allocator('auto')   # as fcdd_jax.main runs: mimalloc on CPU hosts (both measurements)
  from bench import train_step  # pylint: disable=g-import-not-at-top
  bare = train_step.measure(a.net, a.batch, a.steps, a.dtype)
  with tempfile.TemporaryDirectory() as d:
    rate, res = loop_rate(a.root, a.net, a.batch, a.steps, a.dtype, d)
  common.emit(impl='loop', net=a.net, batch=a.batch, dtype=a.dtype, img_per_s=rate,
              peak_rss_bytes=res.get('peak_rss_bytes'), compile_s=res.get('compile_seconds'),
              load=common.load_avg())
  common.emit(impl='ratio', what='loop / bare step', value=round(rate / bare['img_per_s'], 3))


if __name__ == '__main__':
  main()
