"""Test setup: 2 simulated CPU devices, TF kept off accelerators, a temporary cache; the config helper; the
pytest-xdist worker count and the order in which the workers get the tests.

The repository root is importable through pyproject's `[tool.pytest.ini_options] pythonpath`.
"""
import os
import tempfile

# Two simulated CPU devices in the test processes: every in-process run is data-parallel (batches sharded, the
# gradients and BatchNorm statistics reduced across devices, padded rows on a device of their own). Eight made the
# in-process end-to-end runs ~35 % slower here (AE32/CNN32 baselines 37 s vs 23-24 s on 1 or 2 devices; whole
# suite 1,854 vs 1,648 CPU-s, the latter with 7 tests stopped early by their 8-device asserts) for no other
# path; eight devices are still run where they are the point (train_test's other-device-count run, launch_test's
# pods).
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
# XLA's backend optimisations off, here and in the subprocesses the tests start: LLVM generates code at -O0 and
# skips its expensive passes, while XLA's HLO passes (fusion, layouts, buffer assignment, the custom calls) run as
# for a user. The suite's programs are tiny, so compiling is most of its time: a seventh of it here. Results are
# checked against NumPy references with tolerances, and agreement tests compare like with like.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
# One persistent XLA compilation cache for the whole run: the pytest-xdist workers inherit these variables from
# the controller that set them first, and so do the CLI and multi-process runs the tests start. The suite compiles
# the same tiny configs again and again (launch_test alone starts sixteen processes); every
# program is stored, however quickly it compiled. Removed when the run ends (pytest_sessionfinish below).
if 'FCDD_TEST_JAX_CACHE' not in os.environ:
  os.environ['FCDD_TEST_JAX_CACHE'] = tempfile.mkdtemp(prefix='fcdd_test_jax_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = os.environ['FCDD_TEST_JAX_CACHE']
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
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


@pytest.fixture(scope='session')
def cifar_small(tmp_path_factory):
  """A small CIFAR-10 folder tree (the first 12 train / 5 test images of each class, by name) from the shared
  JPEG archive. Only those files are extracted: writing all 60,000 took 20-60 s of system time here."""
  import subprocess  # pylint: disable=g-import-not-at-top
  tar = os.path.join(SHARED, 'data', 'cifar10_jpg.tar.gz')
  if not os.path.exists(tar):
    pytest.skip(f'{tar} not available')
  quota = {'train': 12, 'test': 5}
  by_class = {}
  for name in subprocess.run(['tar', 'tzf', tar], check=True, capture_output=True, text=True).stdout.splitlines():
    parts = name.split('/')
    if len(parts) == 3 and parts[0] in quota and parts[2]:
      by_class.setdefault((parts[0], parts[1]), []).append(name)
  keep = [n for (split, _), names in by_class.items() for n in sorted(names)[:quota[split]]]
  small = tmp_path_factory.mktemp('c10small')
  subprocess.run(['tar', 'xzf', tar, '-C', str(small), '--verbatim-files-from', '-T', '-'], input='\n'.join(keep),
                 check=True, text=True)
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
# the end (longest-processing-time-first). Every file of 10 s or more, longest first, from a whole-suite run
# (`--durations=0`, 2 workers, session 22); the others keep their order. Before, tiling_test (54 s) was not listed,
# ran last on one worker and kept it busy 58 s after the other had finished. A stale entry only costs balance,
# never correctness.
RUN_FIRST = tuple(f'tests/{name}.py' for name in (
    'launch_test', 'train_test', 'models_test', 'experiments_test', 'bench_test', 'probes_test', 'main_test',
    'export_test', 'onednn_conv_test', 'multirun_test', 'figures_test', 'refine_run_test', 'fidelity_test',
    'tiling_test', 'fused_block_test', 'bench_fidelity_test', 'input_pipeline_test', 'export_bench_test',
    'predict_test', 'pretrain_test', 'bench_user_path_test', 'checkpointing_test', 'dtype_agreement_test',
    'pretrained_test', 'patches_test', 'imagenet_test', 'run_test', 'losses_test', 'supervision_test',
    'tf_setup_test', 'block_tail_test',
))


def pytest_collection_modifyitems(items):
  def rank(item):
    return next((i for i, p in enumerate(RUN_FIRST) if item.nodeid.startswith(p)), len(RUN_FIRST))
  items.sort(key=rank)   # stable: the file order within each rank


def pytest_sessionfinish(session):
  """The controller (or a run without workers) removes the run's compilation cache."""
  import shutil  # pylint: disable=g-import-not-at-top
  if not hasattr(session.config, 'workerinput'):
    shutil.rmtree(os.environ['FCDD_TEST_JAX_CACHE'], ignore_errors=True)
