"""Paths the tests share (a plain module, not a test file): the repository root and the shared data dir."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the checkout
SHARED = os.path.join(os.path.dirname(ROOT), 'shared')               # read-only data next to it (may be absent)
DATA = os.path.join(SHARED, 'data')                                  # the shared data sets

# What tests/conftest.py sets for XLA (optimisations off, the run's shared compilation cache).
JAX_TEST_ENV_KEYS = ('JAX_DISABLE_MOST_OPTIMIZATIONS', 'JAX_COMPILATION_CACHE_DIR',
                     'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', 'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES')


def user_env(**extra):
  """A user's clean environment on a CPU host (one device, no accelerator, quiet TensorFlow), for the subprocesses
  that must not see the suite's settings (the benchmarks, the exported-model loaders), plus the suite's XLA
  settings (JAX_TEST_ENV_KEYS) and `extra`."""
  return {'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'JAX_PLATFORMS': 'cpu', 'CUDA_VISIBLE_DEVICES': '',
          'TF_CPP_MIN_LOG_LEVEL': '3', **{k: os.environ[k] for k in JAX_TEST_ENV_KEYS if k in os.environ}, **extra}
