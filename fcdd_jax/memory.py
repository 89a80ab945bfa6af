"""Process memory: the allocator setting for XLA:CPU and the peak resident set of the run."""

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_memory():
  """Makes glibc malloc keep freed memory for reuse instead of returning it to the kernel: one arena, no
  mmap'd chunks, no trimming (mallopt M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD=max).

  XLA:CPU allocates an executable's temporary buffers anew at every execution. Under glibc's defaults a
  buffer above the mmap threshold (or one allocated from a worker thread's arena) is mmap'd and munmap'd
  every time, so each train step first-touches (page-faults) its whole temporary space again: ~300 MB for
  FCDD_CNN28_W at batch 128 in float32, ~500 MB in bfloat16, a large part of the step's time on the 2-core
  VM of bench/README.md. With this setting the pages stay mapped and the step reuses them (PyTorch's per-op
  allocations benefit alike). Call it at process start, before JAX or PyTorch create their thread pools
  (M_ARENA_MAX only affects arenas not yet created). The resident set then stays at its peak.
  Returns True if applied (glibc), False otherwise."""
  import ctypes  # pylint: disable=g-import-not-at-top
  import ctypes.util  # pylint: disable=g-import-not-at-top
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  ok = mallopt(_M_ARENA_MAX, 1) == 1
  ok &= mallopt(_M_MMAP_MAX, 0) == 1
  ok &= mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1
  return bool(ok)


def peak_rss_bytes():
  """Peak resident set size of this process so far (bytes; Linux ru_maxrss is in KiB)."""
  import resource  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(r if sys.platform == 'darwin' else r * 1024)
