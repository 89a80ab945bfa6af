"""Test setup: 8 simulated CPU devices, TF kept off accelerators, a temporary cache; the config helper; the
pytest-xdist worker count and the order in which the workers get the tests.

The repository root is importable through pyproject's `[tool.pytest.ini_options] pythonpath`.
"""
import os
import tempfile

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
os.environ.setdefault('FCDD_STRICT_FIGURES', '1')   # a figure that cannot be written fails the test
os.environ['XDG_CACHE_HOME'] = tempfile.mkdtemp(prefix='fcdd_test_cache_')   # decoded-image caches: never the user's

import importlib  # pylint: disable=g-import-not-at-top,wrong-import-position

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from tests.paths import SHARED  # pylint: disable=g-import-not-at-top,wrong-import-position


def config_for(module='test', **overrides):
  """A config from `fcdd_jax/configs/<module>.py` (a name or the module itself) with field overrides applied.

  Overrides use dotted field paths as keyword names, e.g. `config_for('custom', **{'data.root': d})`;
  ml_collections checks that each field exists and keeps its type, so a typo fails the test.
  """
  if isinstance(module, str):
    module = importlib.import_module(f'fcdd_jax.configs.{module}')
  c = module.get_config()
  c.update_from_flattened_dict(overrides)
  return c


@pytest.fixture(scope='session')
def make_config():
  """The fixture form of `config_for`: `make_config('mvtec', batch_size=8, **{'data.root': d})`."""
  return config_for


@pytest.fixture(scope='session', autouse=True)
def session_compilation_cache(tmp_path_factory):
  """A persistent XLA compilation cache for this test process (one per pytest-xdist worker): the many runs of
  the same tiny configs compile the same programs again and again (a third of refine_run_test's CPU time).
  Programs that compile in under a second (JAX's default threshold) are not stored. Subprocesses (the CLI,
  the multi-process launches) do not inherit it: they compile as a user's run does."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.mktemp('jax_cache')))
  cc.reset_cache()   # collection may have compiled (and initialised the cache without a directory)
  yield
  jax.config.update('jax_compilation_cache_dir', None)
  cc.reset_cache()


@pytest.fixture(scope='session')
def cifar_small(tmp_path_factory):
  """A small CIFAR-10 folder tree (12 train / 5 test images per class) from the shared JPEG archive."""
  import shutil  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  tar = os.path.join(SHARED, 'data', 'cifar10_jpg.tar.gz')
  if not os.path.exists(tar):
    pytest.skip(f'{tar} not available')
  full = tmp_path_factory.mktemp('c10full')
  subprocess.run(['tar', 'xzf', tar, '-C', str(full)], check=True)
  small = tmp_path_factory.mktemp('c10small')
  for split, n in (('train', 12), ('test', 5)):
    for c in os.listdir(full / split):
      os.makedirs(small / split / c)
      for f in sorted(os.listdir(full / split / c))[:n]:
        shutil.copy(full / split / c / f, small / split / c / f)
  shutil.rmtree(full)
  return str(small)


# ----------------------------------------------------------------------------------------------------
# Parallel runs (pytest-xdist, `-n auto --dist loadfile` in pyproject's addopts). Most of the suite's time is
# single-threaded XLA compilation, so one worker per core divides the wall time by nearly the core count.
# loadfile runs each file on one worker, so a module fixture (a trained run) is built once. (`--dist loadgroup`
# would be finer, but pytest-xdist 3.8 cannot tag its groups on pytest 9's node ids: it ignores them.)

WORKER_MEMORY_GB = 6   # a 2-worker run: ~3.5 GB per worker, 8.9 GB summed peak (serial run: 7.6 GB peak)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
  """`-n auto`: one worker per usable core, at most one per WORKER_MEMORY_GB of RAM, at most 8."""
  del config
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
  try:
    ram_gb = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30
  except (ValueError, OSError, AttributeError):
    ram_gb = WORKER_MEMORY_GB
  return max(1, min(cores, int(ram_gb // WORKER_MEMORY_GB), 8))


# The longest files start first, so that no worker is left with a long file while the others are idle at
# the end. Files, longest first (from a serial run's --durations); the others keep their order. A stale
# entry only costs balance, never correctness.
RUN_FIRST = (
    'tests/launch_test.py',           # multi-process runs
    'tests/train_test.py',
    'tests/models_test.py',
    'tests/figures_test.py',
    'tests/experiments_test.py',
    'tests/multirun_test.py',
    'tests/main_test.py',
    'tests/refine_run_test.py',
    'tests/input_pipeline_test.py',
    'tests/imagenet_test.py',
    'tests/fidelity_test.py',
    'tests/bench_test.py',
    'tests/probes_test.py',
    'tests/bench_fidelity_test.py',
    'tests/export_bench_test.py',
    'tests/checkpointing_test.py',
    'tests/voc_test.py',
    'tests/export_test.py',
    'tests/pretrain_test.py',
    'tests/pretrained_test.py',
    'tests/predict_test.py',
)


def pytest_collection_modifyitems(items):
  def rank(item):
    return next((i for i, p in enumerate(RUN_FIRST) if item.nodeid.startswith(p)), len(RUN_FIRST))
  items.sort(key=rank)   # stable: the file order within each rank
