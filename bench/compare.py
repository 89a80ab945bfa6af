"""fcdd_jax's compiled train step (float32 and/or bfloat16) vs PyTorch CPU eager (float32 NCHW and channels_last,
and autocast-bf16 channels_last), measured in ONE process with the implementations alternating step by step, so
that a varying machine load hits all of them alike. One JSON line per implementation (median images/s,
achieved GFLOP/s, peak memory per image), then one `ratio` line per net: jax / best PyTorch float32
(`*_vs_best_torch`), and like for like: float32 vs PyTorch's best float32 layout (`*_vs_torch_f32`), bfloat16
vs PyTorch autocast-bf16 channels_last (`*_vs_torch_bf16`), fcdd_jax's default dtype for the net
(`run.compute_dtype`, 'auto') vs PyTorch's fastest of the three (`*_default_vs_torch_fastest`).

  python -m bench.compare [--net NAME] [--batch B] [--steps S] [--dtypes float32,bfloat16]
                          [--layouts nchw,channels_last] [--threads T] [--keep_freed_memory]
                          [--remat auto|on|off|on,off] [--conv_impl auto|xla|onednn|xla,onednn] [--no_torch_bf16]

--keep_freed_memory calls `memory.keep_freed_memory()` (glibc mallopt) at start, for both frameworks:
XLA:CPU otherwise mmaps and page-faults an executable's whole temporary space at every step.
--remat: the fcdd_jax model option (fused conv-BN-activation-pool blocks); a list builds one jax step per value.
--conv_impl: the convolution path (FCDD_CONV_IMPL while the step is built, `fcdd_jax.models.cpu.onednn`); a list builds one
jax step per value (keys `jax_<dtype>_conv-<impl>`), e.g. `xla,onednn` for an A/B of the oneDNN path.
PyTorch autocast-bf16 (`torch.autocast("cpu", bfloat16)`, channels_last) is alternated with the others unless
--no_torch_bf16 (--torch_bf16_steps is accepted for old command lines and has no effect).

Memory per image: `step_mem_mb_per_img` = (peak resident set during a step - resident set before it) / batch,
the largest over the timed steps (memory an allocator kept mapped from an earlier step is not counted again:
with --keep_freed_memory this is ~0 after the first step); for jax also `temp_mb_per_img`, the compiled step's
XLA temporary space (memory_analysis) / batch. GFLOP/s: `common.train_gflop_per_image` (convolutions only)
x images/s.
"""
import argparse
import contextlib
import os
import statistics
import time

from bench import common


def _timed(fn):
  t = time.perf_counter()
  mem = common.step_peak_rss(fn)
  return time.perf_counter() - t, mem


TORCH_BF16 = 'torch_channels_last-autocast-bf16'


@contextlib.contextmanager
def conv_impl_env(impl):
  """FCDD_CONV_IMPL=impl while a step is traced and compiled (None: leave the environment as it is)."""
  from fcdd_jax.models.cpu import onednn  # pylint: disable=g-import-not-at-top
  old = os.environ.get(onednn.ENV)
  if impl is not None:
    os.environ[onednn.ENV] = impl
  try:
    yield
  finally:
    if impl is not None:
      if old is None:
        os.environ.pop(onednn.ENV, None)
      else:
        os.environ[onednn.ENV] = old


def default_dtype(net):
  """fcdd_jax's compute dtype for `net` under the default config ('auto', `run.compute_dtype`)."""
  from fcdd_jax.pipeline import run  # pylint: disable=g-import-not-at-top
  from fcdd_jax.configs import default  # pylint: disable=g-import-not-at-top
  cfg = default.get_config()
  cfg.model.name = net
  return run.compute_dtype(cfg)


def compare(net, batch, steps, dtypes, layouts, threads=None, warmup=2, remats=(None,), torch_bf16=True,
            conv_impls=(None,)):
  from bench import torch_train_step, train_step  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  runs, compile_s, temp = {}, {}, {}
  for ci in conv_impls:
    for dt in dtypes:
      for rm in remats:
        key = f'jax_{dt}' + ('' if len(remats) == 1 else f'_remat-{ {None: "auto", True: "on", False: "off"}[rm]}')
        key += '' if len(conv_impls) == 1 else f'_conv-{ci or "auto"}'
        with conv_impl_env(ci):
          runs[key], compile_s[key] = train_step.build(net, batch, dt, remat=rm)
        temp[key] = runs[key].temp_bytes
  for lay in layouts:
    runs[f'torch_{lay}'] = torch_train_step.build(net, batch, lay, threads)
  if torch_bf16:
    runs[TORCH_BF16] = torch_train_step.build(net, batch, 'channels_last', threads, autocast_bf16=True)
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
  torch_f32 = {k: v for k, v in ips.items() if k.startswith('torch') and k != TORCH_BF16}
  best_torch = max(torch_f32.values())
  fastest = max(v for k, v in ips.items() if k.startswith('torch'))
  jax_ips = {k: v for k, v in ips.items() if k.startswith('jax')}
  ddt = default_dtype(net)
  like = {}
  for k, v in jax_ips.items():
    dt = k.split('_')[1]
    if dt == 'float32':
      like[f'{k}_vs_torch_f32'] = round(v / best_torch, 3)
    elif TORCH_BF16 in ips:
      like[f'{k}_vs_torch_bf16'] = round(v / ips[TORCH_BF16], 3)
    if dt == ddt:
      like[f'jax_default{k[len("jax_") + len(dt):]}_vs_torch_fastest'] = round(v / fastest, 3)
  ratio = common.emit(impl='ratio', net=net, batch=batch, best_torch_img_per_s=round(best_torch, 3),
                      torch_bf16_img_per_s=round(ips[TORCH_BF16], 3) if TORCH_BF16 in ips else None,
                      torch_fastest_img_per_s=round(fastest, 3), default_dtype=ddt,
                      **{f'{k}_vs_best_torch': round(v / best_torch, 3) for k, v in jax_ips.items()},
                      **like, conv_impls=[_resolved(c) for c in conv_impls],
                      peak_rss_mb=round(common.peak_rss() / 2**20, 1),
                      device_kind=common.cpu_kind(), load=common.load_avg())
  return ratio


def _resolved(impl):
  from fcdd_jax.models.cpu import onednn  # pylint: disable=g-import-not-at-top
  with conv_impl_env(impl):
    return onednn.conv_impl()


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
  p.add_argument('--conv_impl', default=None,
                 help='auto|xla|onednn or a comma list (one jax step per value; default: FCDD_CONV_IMPL as set)')
  p.add_argument('--no_torch_bf16', action='store_true', help='leave out PyTorch autocast-bf16')
  p.add_argument('--torch_bf16_steps', type=int, default=0, help='no effect (autocast-bf16 is always alternated)')
  p.add_argument('--warmup', type=int, default=2,
                 help='untimed rounds before the timed steps (1 is enough where a step takes minutes, e.g. '
                      'PyTorch autocast-bf16 on a CPU without bf16 arithmetic)')
  a = p.parse_args()
  from bench import train_step  # pylint: disable=g-import-not-at-top
  if a.keep_freed_memory:
    from fcdd_jax.utils import memory  # pylint: disable=g-import-not-at-top
    common.emit(impl='setup', keep_freed_memory=memory.keep_freed_memory(), device_kind=common.cpu_kind())
  remats = tuple(train_step.remat_option(v) for v in a.remat.split(','))
  for n in [a.net] if a.net else list(common.NETS):
    compare(n, a.batch or common.NETS[n], a.steps or (5 if '224' in n else 10), a.dtypes.split(','),
            a.layouts.split(','), a.threads, warmup=a.warmup, remats=remats, torch_bf16=not a.no_torch_bf16,
            conv_impls=tuple(a.conv_impl.split(',')) if a.conv_impl else (None,))


if __name__ == '__main__':
  main()
