"""Every config file builds, declares only fields of configs/default.py, and is locked."""
import importlib
import pathlib

import ml_collections
import pytest

from fcdd_jax.configs import default
from fcdd_jax.configs import demo

CONFIG_DIR = pathlib.Path(default.__file__).parent   # fcdd_jax/configs
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
  cfg = importlib.import_module(f'fcdd_jax.configs.{name}').get_config()
  assert _flat_keys(cfg) <= _flat_keys(default.get_config()), name
  assert cfg.batch_size > 0 and cfg.data.name


@pytest.mark.parametrize('name,batch', [('fmnist', 128), ('cifar10', 200), ('imagenet', 200),
                                        ('mvtec', 128), ('pascal_voc', 200)])
def test_paper_recipes_use_the_global_optimiser_batch(name, batch):
  cfg = importlib.import_module(f'fcdd_jax.configs.{name}').get_config()
  assert cfg.batch_size == batch


def test_mvtec_default_is_the_papers_unsupervised_setting():
  cfg = importlib.import_module('fcdd_jax.configs.mvtec').get_config()
  assert (cfg.data.supervise_mode, cfg.data.noise_mode) == ('malformed_normal', 'confetti')


def test_each_experiment_docstring_gives_its_command():
  for name in NAMES:
    if name == 'default':
      continue
    doc = importlib.import_module(f'fcdd_jax.configs.{name}').__doc__ or ''
    assert 'python -m fcdd_jax.main' in doc, name


def test_configs_are_addressable_by_path_and_by_name():
  """`configs/<name>.py` in a checkout (a link to the package's configs), the shipped file by name from any
  directory (an installed wheel), and an unknown name left unchanged for the error message."""
  from fcdd_jax.app import cli  # pylint: disable=g-import-not-at-top
  from tests.paths import ROOT  # pylint: disable=g-import-not-at-top
  shipped = str(CONFIG_DIR / 'custom.py')
  assert pathlib.Path(ROOT, 'configs', 'custom.py').resolve() == pathlib.Path(shipped).resolve()
  assert set(cli.shipped_configs()) == set(NAMES)
  for value in ('custom', 'custom.py', 'configs/custom.py', 'fcdd_jax/configs/custom.py'):
    resolved = cli.resolve_config_path(value)
    assert pathlib.Path(resolved).resolve() == pathlib.Path(shipped).resolve(), value
  assert cli.resolve_config_path('custom:arg').endswith('custom.py:arg')
  assert cli.resolve_config_path('configs/nope.py') == 'configs/nope.py'
  assert cli.resolve_config_path('/elsewhere/custom.py') == '/elsewhere/custom.py'


def test_custom_recipe_is_the_panel_choice():
  """configs/custom.py's recipe was chosen on the panel (bench/README.md, "Panel"): the authors' custom runner
  (confetti, label loss, SGD, running BatchNorm statistics) with the heatmap maximum as the image score."""
  from fcdd_jax.configs import custom  # pylint: disable=g-import-not-at-top
  c = custom.get_config()
  assert (c.data.supervise_mode, c.data.noise_mode, c.data.generated_maps, c.data.gt_min_change) == (
      'malformed_normal', 'confetti', False, 0)
  assert (c.optim.name, c.model.precise_bn, c.eval.image_score) == ('sgd', False, 'max')


@pytest.mark.parametrize('name,field,value,message', [
    ('cifar10', 'preproc', 'aug2', "config.data.preproc='aug2' is not available for cifar10 data; allowed: lcnaug1, "
                                   "lcn, aug1, none, aug1_blackcenter, aug1_blackcenter_inverted"),
    ('fmnist', 'preproc', 'aug1_blackcenter', "config.data.preproc='aug1_blackcenter' is not available for fmnist "
                                              "data; allowed: lcnaug1, lcn, aug1, none"),
    ('mvtec', 'preproc', 'none', "config.data.preproc='none' is not available for mvtec data; allowed: lcnaug1, aug1"),
    ('custom', 'preproc', 'lcn', "config.data.preproc='lcn' is not available for custom data; allowed: aug1, none"),
    ('imagenet', 'supervise_mode', 'malformed_normal', "config.data.supervise_mode='malformed_normal' is not "
                                                       "available for imagenet .*allowed: unsupervised, other, noise"),
    ('pascal_voc', 'preproc', 'lcnaug1', "config.data.preproc='lcnaug1' is not available for pascal_voc data"),
])
def test_dataset_preprocessing_and_supervision_are_checked_before_any_file_is_read(name, field, value, message):
  """What each dataset offers is checked by config_checks (one module), not by the loader after loading: the
  data root does not exist, so a check that needed files would fail differently."""
  from fcdd_jax.pipeline import config_checks  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.data.name, c.data.root, c.data.normal_class = name, '/nonexistent/data/root', 0
  c.data.supervise_mode = 'unsupervised' if field == 'preproc' else value
  c.data.preproc = value if field == 'preproc' else 'aug1'
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.check_data(c)
  setattr(c.data, field, 'aug1' if field == 'preproc' else 'unsupervised')
  config_checks.check_data(c)   # the dataset's own value passes


@pytest.mark.parametrize('field, bad, oks', [
    ('pixel_auc_resolution', 'native', ('original', 'input')),
    ('figure_reference', 'low', ('upsampled', 'lowres')),
])
def test_eval_choices_are_checked(field, bad, oks):
  from fcdd_jax.pipeline import config_checks  # pylint: disable=g-import-not-at-top
  c = demo.get_config()
  c.eval[field] = bad
  with pytest.raises(config_checks.ConfigError, match=f"{field}='{bad}': expected {oks[0]} or {oks[1]}"):
    config_checks.check_config(c)
  for ok in oks:
    c.eval[field] = ok
    config_checks.check_config(c)
