"""Every config file builds, declares only fields of configs/default.py, and is locked."""
import importlib
import pathlib

import ml_collections
import pytest

from configs import default

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / 'configs'
NAMES = sorted(p.stem for p in CONFIG_DIR.glob('*.py') if p.stem not in ('__init__',))


def _flat_keys(cfg, prefix=''):
  keys = set()
  for k, v in cfg.items():
    if isinstance(v, ml_collections.ConfigDict):
      keys |= _flat_keys(v, prefix + k + '.')
    else:
      keys.add(prefix + k)
  return keys


@pytest.mark.parametrize('name', NAMES)
def test_config_builds_with_declared_fields_only(name):
  cfg = importlib.import_module(f'configs.{name}').get_config()
  assert _flat_keys(cfg) <= _flat_keys(default.get_config()), name
  assert cfg.batch_size > 0 and cfg.data.name


@pytest.mark.parametrize('name,batch', [('fmnist', 128), ('cifar10', 200), ('imagenet', 200),
                                        ('mvtec', 128), ('pascal_voc', 200)])
def test_paper_recipes_use_the_global_optimiser_batch(name, batch):
  cfg = importlib.import_module(f'configs.{name}').get_config()
  assert cfg.batch_size == batch


def test_mvtec_default_is_the_papers_unsupervised_setting():
  cfg = importlib.import_module('configs.mvtec').get_config()
  assert (cfg.data.supervise_mode, cfg.data.noise_mode) == ('malformed_normal', 'confetti')


def test_each_experiment_docstring_gives_its_command():
  for name in NAMES:
    if name == 'default':
      continue
    doc = importlib.import_module(f'configs.{name}').__doc__ or ''
    assert 'python -m fcdd_jax.main' in doc, name
