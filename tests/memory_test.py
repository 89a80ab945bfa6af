"""The process allocator: mimalloc is chosen on CPU hosts, preloaded by re-execution, and reuses freed
memory (few page faults) with a bounded resident set; peak RSS is reported."""
import os
import subprocess
import sys
import textwrap

import pytest

from fcdd_jax.utils import memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_mimalloc = pytest.mark.skipif(memory.mimalloc_library() is None, reason='cmeel-mimalloc not installed')

# Allocates (malloc), touches and frees a 96 MiB buffer 30 times while keeping a small array alive between them (the
# pattern of a train step: temporaries freed, a few outputs kept). Prints page faults, peak RSS, allocator.
CHILD = textwrap.dedent('''
    import ctypes, resource, sys
    from fcdd_jax.utils import memory
    memory.exec_with_allocator(sys.argv[1])
    libc = ctypes.CDLL(None)           # malloc/free as the process resolves them (mimalloc when preloaded)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    keep = []
    for i in range(30):
      big = libc.malloc(96 << 20)
      ctypes.memset(big, 1, 96 << 20)  # touch every page, as XLA's kernels do
      keep.append(libc.malloc(4000 + 64 * i))
      libc.free(big)
    r = resource.getrusage(resource.RUSAGE_SELF)
    print(r.ru_minflt, memory.peak_rss_bytes(), memory.active_allocator())
''')


def _child(choice):
  env = {k: v for k, v in os.environ.items() if k not in ('LD_PRELOAD', 'FCDD_ALLOCATOR')}
  out = subprocess.run([sys.executable, '-c', CHILD, choice], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120, check=True).stdout.split()
  return int(out[0]), int(out[1]), out[2]


def test_resolve_choices():
  assert memory.resolve('glibc') == 'glibc'
  assert memory.resolve('auto', accelerator_visible=True) == 'glibc'
  assert memory.resolve('auto') == ('mimalloc' if memory.mimalloc_library() else 'glibc')
  with pytest.raises(ValueError, match=r"--allocator='tcmalloc'; allowed: auto, mimalloc, glibc"):
    memory.resolve('tcmalloc')


@needs_mimalloc
def test_mimalloc_reuses_freed_memory_with_a_bounded_resident_set():
  import numpy as np  # pylint: disable=g-import-not-at-top
  ballast = np.ones(1 << 30, np.uint8)   # a large parent (as pytest late in the suite): the child's peak is its own
  faults_glibc, _, alloc_glibc = _child('glibc')
  faults_mi, peak_mi, alloc_mi = _child('auto')
  assert (alloc_glibc, alloc_mi) == ('glibc', 'mimalloc')
  # glibc mmaps and unmaps the 96 MiB buffer each time: >= 30 x 24k page faults; mimalloc faults it in once
  assert faults_glibc > 30 * 20000
  assert faults_mi * 5 < faults_glibc
  assert peak_mi < 3 * (96 << 20) + (200 << 20)   # one buffer (+ interpreter/numpy), not 30
  del ballast


def test_peak_rss_is_at_least_what_was_touched():
  import numpy as np  # pylint: disable=g-import-not-at-top
  before = memory.peak_rss_bytes()
  x = np.ones(64 << 20, np.uint8)
  assert memory.peak_rss_bytes() >= min(before, x.nbytes)
  assert memory.peak_rss_bytes() > 64 << 20
