"""Shared helpers: JSON lines, device kind, median timing."""
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

NETS = {'FCDD_CNN28_W': 128, 'FCDD_CNN32_LW3K': 128, 'FCDD_CNN224_VGG_F': 16}


def emit(**kw):
  print(json.dumps(kw), flush=True)
  return kw


def cpu_kind():
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip() + f' x{os.cpu_count()}'
  except OSError:
    pass
  return platform.processor() or 'cpu'


def median_time(fn, steps, warmup=1):
  for _ in range(warmup):
    fn()
  ts = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return statistics.median(ts)


def load_avg():
  try:
    return os.getloadavg()[0]
  except OSError:
    return None
