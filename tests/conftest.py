"""Test setup: 8 simulated CPU devices, TF kept off accelerators, a temporary cache; the config helper.

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
