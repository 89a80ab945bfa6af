"""Process memory: which allocator the process runs on, and the peak resident set of the run.

XLA:CPU allocates an executable's temporary buffers anew at every execution (several GB for a 224² net at
batch 32). Under glibc's defaults each large buffer is mmap'd and munmap'd every time, so every train step
first-touches (page-faults) its whole temporary space again: ~2.4 M page faults per FCDD_CNN224_VGG_NOPT
step, 25-35 % of the CPU time in the kernel. Telling glibc to keep freed memory (`keep_freed_memory`) stops
the faults but fragments its single heap: the resident set grew to 21 GB and the kernel killed the run.

mimalloc (shipped as the `cmeel-mimalloc` wheel) keeps freed pages for reuse in size-segregated arenas:
76x fewer page faults than glibc on that step and a resident set bounded by the step's working set
(bench/README.md, "As users run it" and "Memory (float32 / bfloat16, batch 32)"). An allocator must be chosen before the process starts, so
`exec_with_allocator` re-executes the current command with the library in LD_PRELOAD (same pid, same
arguments) once, at the top of the command-line entry points.
"""
import os
import sys

ALLOCATORS = ('auto', 'mimalloc', 'glibc')
_EXEC_MARK = 'FCDD_ALLOCATOR'        # set in the re-executed process: never re-execute twice
# mimalloc: return freed memory to the OS only after 1 s unused (default 10 ms), on transparent huge pages
# where the kernel allows them (fewer page faults and TLB misses): steps of a training loop
# reuse the same pages instead of faulting them in again; idle memory is still given back.
MIMALLOC_ENV = {'MIMALLOC_PURGE_DELAY': '1000', 'MIMALLOC_ALLOW_LARGE_OS_PAGES': '1'}


def mimalloc_library():
  """Path of libmimalloc.so from the cmeel-mimalloc wheel, or None when it is not installed."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:
    files = metadata.files('cmeel-mimalloc') or ()
  except metadata.PackageNotFoundError:
    return None
  for f in files:
    if f.name == 'libmimalloc.so' or (f.name.startswith('libmimalloc.so') and f.name.count('.') == 2):
      path = os.path.realpath(str(f.locate()))
      if os.path.exists(path):
        return path
  return None


def active_allocator():
  """'mimalloc' when libmimalloc is mapped into this process, else 'glibc' (or the platform default)."""
  try:
    with open('/proc/self/maps') as f:
      return 'mimalloc' if 'libmimalloc' in f.read() else 'glibc'
  except OSError:
    return 'default'


def resolve(choice, accelerator_visible=False):
  """The allocator `choice` ('auto' | 'mimalloc' | 'glibc') stands for on this host; ValueError if unknown.

  auto: mimalloc on CPU-only hosts (where XLA's host buffers are the training memory) when the wheel is
  installed; glibc where an accelerator holds the activations."""
  if choice not in ALLOCATORS:
    raise ValueError(f'--allocator={choice!r}; allowed: {", ".join(ALLOCATORS)}')
  if choice == 'auto':
    return 'mimalloc' if (not accelerator_visible and mimalloc_library()) else 'glibc'
  return choice


def exec_with_allocator(choice, accelerator_visible=False):
  """Re-executes this command (sys.orig_argv) with mimalloc preloaded when `choice` resolves to it and it
  is not loaded yet. Returns the allocator in use when no re-execution is needed. Call it before any
  thread pool starts (it replaces the process; output printed so far stays)."""
  want = resolve(choice, accelerator_visible)
  if want != 'mimalloc' or active_allocator() == 'mimalloc' or os.environ.get(_EXEC_MARK):
    return active_allocator()
  lib = mimalloc_library()
  if lib is None:
    raise ValueError('--allocator=mimalloc needs the cmeel-mimalloc package (pip install cmeel-mimalloc)')
  env = dict(os.environ)
  env['LD_PRELOAD'] = ':'.join(p for p in (lib, env.get('LD_PRELOAD', '')) if p)
  env[_EXEC_MARK] = 'mimalloc'
  for k, v in MIMALLOC_ENV.items():
    env.setdefault(k, v)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, list(sys.orig_argv), env)
  return 'mimalloc'  # not reached


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
  (M_ARENA_MAX only affects arenas not yet created). The resident set then stays at its peak, and it can
  grow without bound through fragmentation (21 GB on FCDD_CNN224_VGG_NOPT): benchmarks only, never the
  default of a run (use mimalloc, `exec_with_allocator`).
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
  """Peak resident set size of this process image so far, in bytes: VmHWM of /proc/self/status (Linux; reset
  by exec, unlike ru_maxrss, which a child forked from a large parent inherits), else ru_maxrss."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  import resource  # pylint: disable=g-import-not-at-top
  r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(r if sys.platform == 'darwin' else r * 1024)
