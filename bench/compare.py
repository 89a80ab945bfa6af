"""fcdd_jax's compiled train step (float32 and/or bfloat16) vs PyTorch CPU eager float32 (NCHW and
channels_last), measured in ONE process with the implementations alternating step by step, so that a
varying machine load hits all of them alike. One JSON line per implementation (median images/s), then one
line per net with the ratios jax / best torch.

  python -m bench.compare [--net NAME] [--batch B] [--steps S] [--dtypes float32,bfloat16]
                          [--layouts nchw,channels_last] [--threads T] [--keep_freed_memory]

--keep_freed_memory calls `memory.keep_freed_memory()` (glibc mallopt) at start, for both frameworks:
XLA:CPU otherwise mmaps and page-faults an executable's whole temporary space at every step.
"""
import argparse
import statistics
import time

from bench import common


def compare(net, batch, steps, dtypes, layouts, threads=None, warmup=2):
  from bench import torch_train_step, train_step  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  runs, compile_s = {}, {}
  for dt in dtypes:
    runs[f'jax_{dt}'], compile_s[f'jax_{dt}'] = train_step.build(net, batch, dt)
  for lay in layouts:
    runs[f'torch_{lay}'] = torch_train_step.build(net, batch, lay, threads)
  for _ in range(warmup):
    for r in runs.values():
      r()
  times = {k: [] for k in runs}
  for _ in range(steps):
    for k, r in runs.items():
      t = time.perf_counter()
      r()
      times[k].append(time.perf_counter() - t)
  ips = {k: batch / statistics.median(v) for k, v in times.items()}
  for k, v in ips.items():
    impl, variant = k.split('_', 1)
    common.emit(impl=impl, net=net, batch=batch, **({'dtype': variant} if impl == 'jax' else {'layout': variant}),
                img_per_s=round(v, 2), seconds=round(batch / v, 4), compile_s=compile_s.get(k),
                device_kind=train_step.device_kind() if impl == 'jax' else common.cpu_kind(),
                threads=torch.get_num_threads(), load=common.load_avg())
  best_torch = max(v for k, v in ips.items() if k.startswith('torch'))
  return common.emit(impl='ratio', net=net, batch=batch, best_torch_img_per_s=round(best_torch, 2),
                     **{f'{k}_vs_best_torch': round(v / best_torch, 3) for k, v in ips.items()
                        if k.startswith('jax')},
                     device_kind=common.cpu_kind(), load=common.load_avg())


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--net', default=None)
  p.add_argument('--batch', type=int, default=None)
  p.add_argument('--steps', type=int, default=None)
  p.add_argument('--dtypes', default='float32,bfloat16')
  p.add_argument('--layouts', default='nchw,channels_last')
  p.add_argument('--threads', type=int, default=None)
  p.add_argument('--keep_freed_memory', action='store_true')
  a = p.parse_args()
  if a.keep_freed_memory:
    from fcdd_jax import memory  # pylint: disable=g-import-not-at-top
    common.emit(impl='setup', keep_freed_memory=memory.keep_freed_memory(), device_kind=common.cpu_kind())
  for n in [a.net] if a.net else list(common.NETS):
    compare(n, a.batch or common.NETS[n], a.steps or (5 if '224' in n else 10), a.dtypes.split(','),
            a.layouts.split(','), a.threads)


if __name__ == '__main__':
  main()
