"""fcdd_jax's train step as `fcdd_jax.main` runs it vs PyTorch's as shipped (issue 17, item 4).

  python -m bench.user_path [--net NAME] [--batch B] [--steps S] [--dtypes float32,bfloat16]
                            [--layouts nchw,channels_last] [--threads T]

`bench.compare` runs both frameworks in one process, so both get the same allocator. Users get different
ones: `fcdd_jax.main` re-executes itself with mimalloc preloaded on CPU hosts (`--allocator=auto`,
`fcdd_jax.utils.memory`), PyTorch runs on glibc malloc. Here every implementation (fcdd_jax per dtype, PyTorch
per layout) is its own worker process with its own allocator, and this process alternates single steps
between the workers (one step each, round after round, after a short untimed idle gap), so a varying
machine load hits all alike, as in `bench.compare`.

Prints one JSON line per implementation (median images/s, allocator, peak memory per image of a step, the
worker's peak resident set) and one line with the ratios jax / best PyTorch float32 layout.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bench import common


def _worker(impl, variant, net, batch, threads):
  """Worker loop: builds one step, then answers each 'step' line on stdin with one JSON line."""
  if impl == 'jax':
    from bench import train_step  # pylint: disable=g-import-not-at-top
    run, compile_s = train_step.build(net, batch, variant)
  else:
    from bench import torch_train_step  # pylint: disable=g-import-not-at-top
    run, compile_s = torch_train_step.build(net, batch, variant, threads), None
  from fcdd_jax.utils import memory  # pylint: disable=g-import-not-at-top
  print(json.dumps({'ready': True, 'compile_s': compile_s, 'allocator': memory.active_allocator()}), flush=True)
  for line in sys.stdin:
    if line.strip() != 'step':
      break
    t = time.perf_counter()
    mem = common.step_peak_rss(run)
    print(json.dumps({'seconds': time.perf_counter() - t, 'mem': mem}), flush=True)
  print(json.dumps({'peak_rss': common.peak_rss()}), flush=True)


class _Worker:
  """A worker process; `step()` runs one step in it and returns (seconds, step memory bytes)."""

  def __init__(self, impl, variant, net, batch, threads):
    from fcdd_jax.utils import memory  # pylint: disable=g-import-not-at-top
    env = dict(os.environ)
    if impl == 'jax':  # what fcdd_jax.main does on this host (--allocator=auto)
      lib = memory.mimalloc_library() if memory.resolve('auto') == 'mimalloc' else None
      if lib:
        env['LD_PRELOAD'] = ':'.join(p for p in (lib, env.get('LD_PRELOAD', '')) if p)
        for k, v in memory.MIMALLOC_ENV.items():
          env.setdefault(k, v)
    cmd = [sys.executable, '-m', 'bench.user_path', '--worker', f'{impl}:{variant}', '--net', net,
           '--batch', str(batch)] + (['--threads', str(threads)] if threads else [])
    self.key = f'{impl}_{variant}'
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    self.info = self._read()

  def _read(self):
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f'bench.user_path worker {self.key} exited with code {self.proc.wait()}')
    return json.loads(line)

  def step(self):
    self.proc.stdin.write('step\n')
    self.proc.stdin.flush()
    r = self._read()
    return r['seconds'], r['mem']

  def close(self):
    self.proc.stdin.write('quit\n')
    self.proc.stdin.flush()
    peak = self._read()['peak_rss']
    self.proc.wait()
    return peak


def user_path(net, batch, steps, dtypes, layouts, threads=None, warmup=2, gap=0.2):
  """Alternates steps between the workers; `gap` seconds of idle time before each step (not timed) let the
  previous worker's spinning thread pools (OpenMP, Eigen) go to sleep."""
  workers = [_Worker('jax', dt, net, batch, threads) for dt in dtypes]
  workers += [_Worker('torch', lay, net, batch, threads) for lay in layouts]
  try:
    for _ in range(warmup):
      for w in workers:
        w.step()
    times = {w.key: [] for w in workers}
    mems = {w.key: [] for w in workers}
    for _ in range(steps):
      for w in workers:
        time.sleep(gap)
        t, m = w.step()
        times[w.key].append(t)
        mems[w.key].append(m)
  finally:
    peaks = {}
    for w in workers:
      try:
        peaks[w.key] = w.close()
      except (OSError, RuntimeError, ValueError):
        w.proc.kill()
  gflop = common.train_gflop_per_image(net)
  ips = {k: batch / statistics.median(v) for k, v in times.items()}
  for w in workers:
    impl, variant = w.key.split('_', 1)
    mem = [m for m in mems[w.key] if m is not None]
    common.emit(impl=impl, net=net, batch=batch, **({'dtype': variant} if impl == 'jax' else {'layout': variant}),
                allocator=w.info['allocator'], img_per_s=round(ips[w.key], 3), steps=steps,
                gflop_per_s=round(ips[w.key] * gflop, 1), compile_s=w.info['compile_s'],
                step_mem_mb_per_img=round(max(mem) / batch / 2**20, 2) if mem else None,
                peak_rss_mb=round(peaks[w.key] / 2**20, 1) if w.key in peaks else None,
                device_kind=common.cpu_kind(), load=common.load_avg())
  best = max(v for k, v in ips.items() if k.startswith('torch'))
  return common.emit(impl='ratio', net=net, batch=batch, best_torch_img_per_s=round(best, 3),
                     **{f'{k}_vs_best_torch': round(v / best, 3) for k, v in ips.items() if k.startswith('jax')},
                     device_kind=common.cpu_kind(), load=common.load_avg())


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument('--net', default='FCDD_CNN224_VGG_NOPT')
  p.add_argument('--batch', type=int, default=None)
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--dtypes', default='float32,bfloat16')
  p.add_argument('--layouts', default='nchw,channels_last')
  p.add_argument('--threads', type=int, default=None)
  p.add_argument('--worker', default='', help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  batch = a.batch or common.NETS[a.net]
  if a.worker:
    impl, variant = a.worker.split(':')
    return _worker(impl, variant, a.net, batch, a.threads)
  return user_path(a.net, batch, a.steps, [d for d in a.dtypes.split(',') if d],
                   [l for l in a.layouts.split(',') if l], a.threads)


if __name__ == '__main__':
  main()
