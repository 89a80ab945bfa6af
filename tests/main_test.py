"""The command line: one-line errors with non-zero exit codes, and a run on another device count."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(args, devices=1, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.run([sys.executable, '-m', 'fcdd_jax.main', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _assert_one_line_error(proc, pattern, code=2):
  import re  # pylint: disable=g-import-not-at-top
  assert proc.returncode == code, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('fcdd_jax: error:')]
  assert len(errors) == 1, proc.stderr[-2000:]
  assert re.search(pattern, errors[0]), errors[0]


def test_unknown_config_field(tmp_path):
  proc = run_cli(['--config', 'configs/test.py', '--config.data.nope=1', '--workdir', str(tmp_path)])
  _assert_one_line_error(proc, r"unknown config field 'config.data.nope'")


def test_bad_value_type(tmp_path):
  proc = run_cli(['--config', 'configs/test.py', '--config.batch_size=abc', '--workdir', str(tmp_path)])
  _assert_one_line_error(proc, r'config.batch_size=abc')


def test_missing_config_file(tmp_path):
  proc = run_cli(['--config', 'configs/nope.py', '--workdir', str(tmp_path)])
  _assert_one_line_error(proc, r"config file 'configs/nope.py' does not exist.*fmnist")


def test_unknown_net(tmp_path):
  proc = run_cli(['--config', 'configs/test.py', '--config.model.name=FCDD_NOPE', '--workdir', str(tmp_path)])
  _assert_one_line_error(proc, r"model.name='FCDD_NOPE' is unknown; known nets:")


def test_unknown_dataset(tmp_path):
  proc = run_cli(['--config', 'configs/test.py', '--config.data.name=nope', '--workdir', str(tmp_path)])
  _assert_one_line_error(proc, r"nope")


def test_vgg_f_without_weights_says_how_to_get_them(tmp_path):
  proc = run_cli(['--config', 'configs/custom.py', '--config.data.root=' + str(tmp_path),
                  '--workdir', str(tmp_path / 'w')])
  _assert_one_line_error(proc, r'pretrained_path is empty.*FCDD_CNN224_VGG_NOPT')


def test_manual_download_sources_say_which_files_go_where(tmp_path):
  # imagenet2012 is a manual-download dataset: tfds fails at once on the missing tars (no download is tried);
  # an empty tfds data_dir in tmp keeps ~/tensorflow_datasets untouched
  env_dir = str(tmp_path / 'tfds')
  proc = run_cli(['--config', 'configs/imagenet.py', '--workdir', str(tmp_path),
                  '--config.data.tfds_data_dir=' + env_dir])
  _assert_one_line_error(proc, r'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar')
  proc = run_cli(['--config', 'configs/imagenet.py', '--workdir', str(tmp_path), '--config.data.root=' + str(tmp_path),
                  '--config.data.tfds_data_dir=' + env_dir])
  _assert_one_line_error(proc, r'ILSVRC2012_img_train.tar')
  proc = run_cli(['--config', 'configs/cifar10.py', '--config.data.root=' + str(tmp_path), '--workdir', str(tmp_path)])
  assert proc.returncode == 2 and 'fcdd_jax: error:' in proc.stderr


def test_keep_freed_memory_auto_follows_the_visible_platform(monkeypatch):
  from fcdd_jax import main  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  assert not main._accelerator_visible()  # pylint: disable=protected-access
  monkeypatch.setenv('JAX_PLATFORMS', 'tpu,cpu')
  assert main._accelerator_visible()  # pylint: disable=protected-access
  from fcdd_jax import memory  # pylint: disable=g-import-not-at-top
  import platform  # pylint: disable=g-import-not-at-top
  if platform.libc_ver()[0] == 'glibc':
    assert memory.keep_freed_memory()                   # mallopt accepted all three settings
