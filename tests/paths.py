"""Paths the tests share (a plain module, not a test file): the repository root and the shared data dir."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the checkout
SHARED = os.path.join(os.path.dirname(ROOT), 'shared')               # read-only data next to it (may be absent)
DATA = os.path.join(SHARED, 'data')                                  # the shared data sets

# What tests/conftest.py sets for XLA (optimisations off, the run's shared compilation cache): subprocesses the
# tests start with a clean environment (a user's, for the benchmarks and the exported-model loaders) add these.
JAX_TEST_ENV_KEYS = ('JAX_DISABLE_MOST_OPTIMIZATIONS', 'JAX_COMPILATION_CACHE_DIR',
                     'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', 'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES')


def jax_test_env():
  """The JAX_* variables of JAX_TEST_ENV_KEYS that this test process has."""
  return {k: os.environ[k] for k in JAX_TEST_ENV_KEYS if k in os.environ}
