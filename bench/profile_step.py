"""Where the time of one compiled fcdd_jax train step goes: a jax.profiler trace of a few steps, summed per XLA
operation and grouped (GEMMs, convolutions, im2col/data movement, other fusions), with each top op's HLO
shape. Prints one JSON line per group and per top op (ms per step and share of the step; XLA:CPU may run
independent ops on several threads at once, so shares can add up to more than 1).

  python -m bench.profile_step [--net FCDD_CNN28_W] [--batch 128] [--dtype bfloat16] [--steps 3] [--top 12]
                               [--keep_freed_memory] [--remat auto|on|off]
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile

from bench import common
from bench import train_step

GROUPS = (('gemm', ('ynn_fusion', 'dot', 'onednn', 'gemm', 'matmul')),
          ('im2col / data movement', ('concatenate', 'pad', 'slice', 'bitcast', 'copy', 'transpose')),
          ('convolution', ('convolution',)),
          ('reduction (BN statistics, loss)', ('reduce',)))


def group_of(name):
  for group, keys in GROUPS:
    if any(k in name for k in keys):
      return group
  return 'elementwise fusions (BN, activations, casts, optimizer)'


def hlo_shapes(hlo_text):
  """op name -> result type of its defining line in the compiled HLO text."""
  out = {}
  for m in re.finditer(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+\[[^\]]*\][^\s]*)', hlo_text, re.M):
    out.setdefault(m.group(1), m.group(2))
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--net', default='FCDD_CNN28_W')
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--dtype', default='bfloat16', choices=['float32', 'bfloat16'])
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--top', type=int, default=12)
  p.add_argument('--keep_freed_memory', action='store_true')
  p.add_argument('--remat', default='auto', choices=['auto', 'on', 'off'])
  a = p.parse_args()
  if a.keep_freed_memory:
    from fcdd_jax.utils import memory  # pylint: disable=g-import-not-at-top
    memory.keep_freed_memory()
  import jax  # pylint: disable=g-import-not-at-top
  run, _, hlo = train_step.build(a.net, a.batch, a.dtype, with_hlo=True, remat=train_step.remat_option(a.remat))
  for _ in range(3):
    run()
  logdir = tempfile.mkdtemp(prefix='fcdd_profile_')
  with jax.profiler.trace(logdir, create_perfetto_trace=True):
    for _ in range(a.steps):
      run()
  trace = sorted(glob.glob(os.path.join(logdir, '**', '*.trace.json.gz'), recursive=True))[-1]
  with gzip.open(trace) as f:
    data = json.load(f)
  events = data['traceEvents'] if isinstance(data, dict) else data
  per_op = collections.Counter()
  step_us = 0.0
  for e in events:
    if e.get('ph') != 'X':
      continue
    name = e['name']
    if name == 'ThunkExecutor::Execute':
      step_us += e.get('dur', 0)
    elif not name.startswith(('$', 'ThunkExecutor', 'SlinkyThreadPool')) and '::' not in name:
      per_op[name] += e.get('dur', 0)
  step_ms = step_us / a.steps / 1000
  shapes = hlo_shapes(hlo)
  groups = collections.Counter()
  for name, us in per_op.items():
    groups[group_of(name)] += us
  base = dict(net=a.net, batch=a.batch, dtype=a.dtype, device_kind=train_step.device_kind(),
              load=common.load_avg())
  common.emit(impl='jax', what='step', ms=round(step_ms, 1), img_per_s=round(a.batch / step_ms * 1000, 1), **base)
  for g, us in groups.most_common():
    ms = us / a.steps / 1000
    common.emit(impl='jax', what='group', group=g, ms=round(ms, 1), share=round(ms / step_ms, 3), **base)
  for name, us in per_op.most_common(a.top):
    ms = us / a.steps / 1000
    common.emit(impl='jax', what='op', op=name, group=group_of(name), shape=shapes.get(name, '?'),
                ms=round(ms, 1), share=round(ms / step_ms, 3), **base)


if __name__ == '__main__':
  main()
