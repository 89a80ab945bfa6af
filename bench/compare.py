"""fcdd_jax's compiled train step (float32 and/or bfloat16) vs PyTorch CPU eager float32 (NCHW and
channels_last), measured in ONE process with the implementations alternating step by step, so that a
varying machine load hits all of them alike. One JSON line per implementation (median images/s, achieved
GFLOP/s, peak memory per image), then one line per net with the ratios jax / best torch float32.

  python -m bench.compare [--net NAME] [--batch B] [--steps S] [--dtypes float32,bfloat16]
                          [--layouts nchw,channels_last] [--threads T] [--keep_freed_memory]
                          [--remat auto|on|off|on,off] [--torch_bf16_steps N]

--keep_freed_memory calls `memory.keep_freed_memory()` (glibc mallopt) at start, for both frameworks:
XLA:CPU otherwise mmaps and page-faults an executable's whole temporary space at every step.
--remat: the fcdd_jax model option (fused conv-BN-activation-pool blocks); a list builds one jax step per value.
--torch_bf16_steps N (opt-in, default 0): also time N steps of PyTorch autocast-bf16 (channels_last) after the
alternating rounds (one warm-up step first). On this CPU it is ~10x slower than PyTorch float32 (minutes per
step on FCDD_CNN224_VGG_NOPT), so it is neither alternated nor part of the ratios.

Memory per image: `step_mem_mb_per_img` = (peak resident set during a step - resident set before it) / batch,
the largest over the timed steps (memory an allocator kept mapped from an earlier step is not counted again:
with --keep_freed_memory this is ~0 after the first step); for jax also `temp_mb_per_img`, the compiled step's
XLA temporary space (memory_analysis) / batch. GFLOP/s: `common.train_gflop_per_image` (convolutions only)
x images/s.
"""
import argparse
import statistics
import time

from bench import common


def _timed(fn):
  t = time.perf_counter()
  mem = common.step_peak_rss(fn)
  return time.perf_counter() - t, mem


def compare(net, batch, steps, dtypes, layouts, threads=None, warmup=2, remats=(None,), torch_bf16_steps=0):
  from bench import torch_train_step, train_step  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  runs, compile_s, temp = {}, {}, {}
  for dt in dtypes:
    for rm in remats:
      key = f'jax_{dt}' + ('' if len(remats) == 1 else f'_remat-{ {None: "auto", True: "on", False: "off"}[rm]}')
      runs[key], compile_s[key] = train_step.build(net, batch, dt, remat=rm)
      temp[key] = runs[key].temp_bytes
  for lay in layouts:
    runs[f'torch_{lay}'] = torch_train_step.build(net, batch, lay, threads)
  for _ in range(warmup):
    for r in runs.values():
      r()
  times = {k: [] for k in runs}
  mems = {k: [] for k in runs}
  for _ in range(steps):
    for k, r in runs.items():
      t, m = _timed(r)
      times[k].append(t)
      mems[k].append(m)
  gflop = common.train_gflop_per_image(net)
  ips = {k: batch / statistics.median(v) for k, v in times.items()}

  def emit(k, v, n_steps):
    impl, variant = k.split('_', 1)
    mem = [m for m in mems[k] if m is not None]
    common.emit(impl=impl, net=net, batch=batch, **({'dtype': variant} if impl == 'jax' else {'layout': variant}),
                img_per_s=round(v, 3), seconds=round(batch / v, 4), steps=n_steps,
                gflop_per_s=round(v * gflop, 1), compile_s=compile_s.get(k),
                step_mem_mb_per_img=round(max(mem) / batch / 2**20, 2) if mem else None,
                temp_mb_per_img=round(temp[k] / batch / 2**20, 2) if temp.get(k) is not None else None,
                device_kind=train_step.device_kind() if impl == 'jax' else common.cpu_kind(),
                threads=torch.get_num_threads(), load=common.load_avg())

  for k, v in ips.items():
    emit(k, v, steps)
  best_torch = max(v for k, v in ips.items() if k.startswith('torch'))
  ratio = common.emit(impl='ratio', net=net, batch=batch, best_torch_img_per_s=round(best_torch, 3),
                      **{f'{k}_vs_best_torch': round(v / best_torch, 3) for k, v in ips.items()
                         if k.startswith('jax')},
                      peak_rss_mb=round(common.peak_rss() / 2**20, 1),
                      device_kind=common.cpu_kind(), load=common.load_avg())
  if torch_bf16_steps:
    run = torch_train_step.build(net, batch, 'channels_last', threads, autocast_bf16=True)
    run()
    k = 'torch_channels_last-autocast-bf16'
    times[k], mems[k] = [], []
    for _ in range(torch_bf16_steps):
      t, m = _timed(run)
      times[k].append(t)
      mems[k].append(m)
    emit(k, batch / statistics.median(times[k]), torch_bf16_steps)
  return ratio


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--net', default=None)
  p.add_argument('--batch', type=int, default=None)
  p.add_argument('--steps', type=int, default=None)
  p.add_argument('--dtypes', default='float32,bfloat16')
  p.add_argument('--layouts', default='nchw,channels_last')
  p.add_argument('--threads', type=int, default=None)
  p.add_argument('--keep_freed_memory', action='store_true')
  p.add_argument('--remat', default='auto', help='auto|on|off, or a comma list (one jax step per value)')
  p.add_argument('--torch_bf16_steps', type=int, default=0)
  a = p.parse_args()
  from bench import train_step  # pylint: disable=g-import-not-at-top
  if a.keep_freed_memory:
    from fcdd_jax import memory  # pylint: disable=g-import-not-at-top
    common.emit(impl='setup', keep_freed_memory=memory.keep_freed_memory(), device_kind=common.cpu_kind())
  remats = tuple(train_step.remat_option(v) for v in a.remat.split(','))
  for n in [a.net] if a.net else list(common.NETS):
    compare(n, a.batch or common.NETS[n], a.steps or (5 if '224' in n else 10), a.dtypes.split(','),
            a.layouts.split(','), a.threads, remats=remats, torch_bf16_steps=a.torch_bf16_steps)


if __name__ == '__main__':
  main()
