"""The command line: one-line errors with non-zero exit codes, and a run on another device count."""
import json
import os
import subprocess
import sys

import pytest

from tests.paths import ROOT
from tests import support


def _assert_one_line_error(proc, pattern, code=2):
  import re  # pylint: disable=g-import-not-at-top
  assert proc.returncode == code, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('fcdd_jax: error:')]
  assert len(errors) == 1, proc.stderr[-2000:]
  assert re.search(pattern, errors[0]), errors[0]


def test_unknown_config_field(tmp_path):
  proc = support.run_cli(['--config', 'configs/test.py', '--config.data.nope=1', '--workdir', str(tmp_path)])
  _assert_one_line_error(proc, r"unknown config field 'config.data.nope'")


def test_url_workdir_is_refused(tmp_path):
  proc = support.run_cli(['--config', 'configs/test.py', '--workdir', 'gs://bucket/runs/x'], timeout=120)
  _assert_one_line_error(proc, r'--workdir=gs://bucket/runs/x is a URL; .*local directory or a mounted bucket')
  assert not os.path.exists(os.path.join(support.ROOT, 'gs:'))


def test_bad_value_type(tmp_path):
  proc = support.run_cli(['--config', 'configs/test.py', '--config.batch_size=abc', '--workdir', str(tmp_path)])
  _assert_one_line_error(proc, r'config.batch_size=abc')


def test_missing_config_file(tmp_path):
  proc = support.run_cli(['--config', 'configs/nope.py', '--workdir', str(tmp_path)])
  _assert_one_line_error(proc, r"config file 'configs/nope.py' does not exist.*fmnist")


def test_help_lists_every_config_field_with_its_default_and_meaning():
  """Issue 26/28 item 9: `--help` exits 0 and lists the flags and every field of configs/default.py."""
  from fcdd_jax.app import cli  # pylint: disable=g-import-not-at-top
  proc = support.run_cli(['--help'])
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = proc.stdout
  assert '--workdir' in out and '--allocator' in out
  assert '--config.optim.lr (default: 0.001)\n        learning rate' in out
  assert "--config.data.noise_mode (default: 'cifar100')" in out and '[refine] training-data refinement' in out
  for field, default in cli.default_fields().items():
    assert f'--config.{field} (default: {default!r})' in out, field
  docs = [f for _, _, fields in cli.field_docs() for f in fields]
  assert len(docs) == len(cli.default_fields()) and all(meaning for _, _, meaning in docs), \
      [f for f, _, m in docs if not m]   # every field has its meaning next to it in default.py
  assert support.run_cli(['--helpfull']).returncode == 0


def _config_file(tmp_path, body):
  path = tmp_path / 'my_config.py'
  path.write_text(body)
  return str(path)


def test_config_file_typo_is_refused_with_the_file_the_field_and_the_closest_name(tmp_path):
  """Issue 28 item 4: a misspelled field in a config FILE is refused like one on the command line."""
  path = _config_file(tmp_path, 'from fcdd_jax.configs import test\ndef get_config():\n  c = test.get_config()\n'
                                '  c.optim.lrr = 5.0\n  return c\n')
  proc = support.run_cli(['--config', path, '--workdir', str(tmp_path / 'w')])
  _assert_one_line_error(proc, rf"config file '{path}' sets unknown config field 'config.optim.lrr' \(did you mean "
                               r"'config.optim.lr'\?\)")
  assert not os.path.exists(tmp_path / 'w')


def test_config_file_without_get_config_or_whose_get_config_raises(tmp_path):
  """Issue 28 item 6: one line naming the file and the error, no traceback."""
  path = _config_file(tmp_path, 'X = 1\n')
  _assert_one_line_error(support.run_cli(['--config', path]), rf"config file '{path}' defines no get_config\(\)")
  path = _config_file(tmp_path, 'def get_config():\n  raise RuntimeError("no data root set")\n')
  _assert_one_line_error(support.run_cli(['--config', path]),
                         rf"config file '{path}': get_config\(\) raised RuntimeError: no data root set$")
  path = _config_file(tmp_path, 'def get_config(:\n')
  _assert_one_line_error(support.run_cli(['--config', path]), rf"cannot load config file '{path}': SyntaxError")


def test_default_config_names_the_field_before_loading_data(tmp_path):
  """Issue 28 item 8: `--config default` (demo data with the OE mode cifar100) fails before any data is read,
  naming config.data.noise_mode."""
  proc = support.run_cli(['--config', 'default', '--workdir', str(tmp_path / 'w')])
  _assert_one_line_error(proc, r"config.data.noise_mode='cifar100' is not available for data.name='demo'.*confetti")
  assert 'fcdd_jax: workdir' not in proc.stdout and not os.path.exists(tmp_path / 'w')


def test_exit_codes_are_the_readme_table(tmp_path):
  """Issue 28 item 9: a workdir the file system refuses exits 4 (README, "Exit codes")."""
  with support.read_only_dir(tmp_path / 'ro') as ro:
    proc = support.run_cli(['--config', 'configs/test.py', '--workdir', os.path.join(ro, 'w')])
    _assert_one_line_error(proc, r'cannot create the workdir .*(Read-only file system|Permission denied)', code=4)
  readme = open(os.path.join(ROOT, 'README.md')).read()
  for code in ('| 2 |', '| 3 |', '| 4 |', '| 130 |'):
    assert code in readme, code


def test_no_device_for_jax_platforms_is_one_line(tmp_path):
  """README "Troubleshooting", no GPU found: JAX_PLATFORMS naming a platform without its wheel."""
  env = dict(os.environ, JAX_PLATFORMS='cuda')
  proc = subprocess.run([sys.executable, '-m', 'fcdd_jax.main', '--config', 'test', '--workdir', str(tmp_path / 'w'),
                         '--allocator=glibc'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  _assert_one_line_error(proc, r"JAX found no usable device for JAX_PLATFORMS='cuda' .*jax\[cuda12\]")
  assert not os.path.exists(tmp_path / 'w')


def test_shipped_config_by_name_from_another_directory(tmp_path):
  """`--config test` (a name: the file inside the package, as from an installed wheel) from a directory with
  no configs/; the overrides apply to it."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  proc = subprocess.run([sys.executable, '-m', 'fcdd_jax.main', '--config', 'test', '--config.num_train_steps=2',
                         '--config.eval.num_figure_samples=2', '--workdir', str(tmp_path / 'run')],
                        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / 'run' / 'results.json') as f:
    assert json.load(f)['steps'] == 2


def test_unknown_net(tmp_path):
  """A config error is reported before TensorFlow is imported (its import alone takes seconds)."""
  proc = support.run_cli(['--config', 'configs/test.py', '--config.model.name=FCDD_NOPE',
                          '--workdir', str(tmp_path)], env={'PYTHONPROFILEIMPORTTIME': '1'})
  _assert_one_line_error(proc, r"model.name='FCDD_NOPE' is unknown; known nets:")
  imported = [l.rsplit('|', 1)[-1].strip() for l in proc.stderr.splitlines() if l.startswith('import time:')]
  assert 'jax' in imported and 'tensorflow' not in imported


def test_unknown_dataset(tmp_path):
  proc = support.run_cli(['--config', 'configs/test.py', '--config.data.name=nope', '--workdir', str(tmp_path)])
  _assert_one_line_error(proc, r"config\.data\.name='nope' is unknown; known datasets: demo, custom, mvtec, fmnist, "
                               r"cifar10, imagenet, pascal_voc$")


def test_vgg_f_without_weights_says_how_to_get_them(tmp_path):
  proc = support.run_cli(['--config', 'configs/custom.py', '--config.data.root=' + str(tmp_path),
                          '--workdir', str(tmp_path / 'w')])
  _assert_one_line_error(proc, r'pretrained_path is empty.*fcdd_jax.pretrain --out.*FCDD_CNN224_VGG_NOPT')


def test_manual_download_sources_say_which_files_go_where(tmp_path, capfd):
  # imagenet2012 is a manual-download dataset: tfds fails at once on the missing tars (no download is tried);
  # an empty tfds data_dir in tmp keeps ~/tensorflow_datasets untouched. In this process (`run_main`): three
  # command-line processes importing TensorFlow took ~25 s here.
  env_dir = str(tmp_path / 'tfds')
  code, _, err = run_main(['--config', 'configs/imagenet.py', '--workdir', str(tmp_path / 'a'),
                           '--config.data.tfds_data_dir=' + env_dir], capfd)
  _the_error(err, code, 2, r'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar')
  code, _, err = run_main(['--config', 'configs/imagenet.py', '--workdir', str(tmp_path / 'b'),
                           '--config.data.root=' + str(tmp_path), '--config.data.tfds_data_dir=' + env_dir], capfd)
  _the_error(err, code, 2, r'ILSVRC2012_img_train.tar')
  code, _, err = run_main(['--config', 'configs/cifar10.py', '--config.data.root=' + str(tmp_path),
                           '--workdir', str(tmp_path / 'c')], capfd)
  _the_error(err, code, 2, r'train/airplane is missing: CIFAR-10 folders need train/<class>/\* for the classes airplane, ')


def test_accelerator_visibility_follows_jax_platforms(monkeypatch):
  from fcdd_jax.app import process  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  assert not process.accelerator_visible()
  monkeypatch.setenv('JAX_PLATFORMS', 'tpu,cpu')
  assert process.accelerator_visible()


# ----------------------------------------------------------------------------------------------------
# Fault injection through the command line (issue 14), in-process to stay fast: one trained run is copied per
# test. Each test checks what is kept, the one-line message, the exit code, and that predict still works.

import contextlib  # pylint: disable=g-import-not-at-top,wrong-import-position
import glob  # pylint: disable=g-import-not-at-top,wrong-import-position
import re  # pylint: disable=g-import-not-at-top,wrong-import-position
import shutil  # pylint: disable=g-import-not-at-top,wrong-import-position


@contextlib.contextmanager
def _absl_logging_like_the_cli():
  """app.run routes Python logging through absl's handler; do the same, and undo it afterwards."""
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  root = std_logging.getLogger()
  handlers, handler = list(root.handlers), absl_logging.get_absl_handler()
  filters, formatter, verbosity = list(handler.filters), handler.python_handler.formatter, absl_logging.get_verbosity()
  absl_logging.use_absl_handler()
  try:
    yield
  finally:
    root.handlers[:] = handlers
    handler.filters[:] = filters
    handler.setFormatter(formatter)
    absl_logging.set_verbosity(verbosity)


def run_main(args, capfd=None):
  """`python -m fcdd_jax.main ARGS` in this process (conftest's simulated devices): (exit code, stdout, stderr)."""
  from fcdd_jax import main  # pylint: disable=g-import-not-at-top
  code = 0
  with _absl_logging_like_the_cli():
    try:
      main.main(main.parse_flags(['fcdd_jax', '--allocator=glibc', *args]))
    except SystemExit as e:
      code = e.code
  out, err = capfd.readouterr() if capfd is not None else ('', '')
  return code, out, err


def _the_error(err, code, expected_code, pattern):
  """Exactly one `fcdd_jax: error:` line matching `pattern`, no traceback, the expected exit code."""
  assert code == expected_code, err[-3000:]
  assert 'Traceback' not in err and 'Exception ignored' not in err, err[-3000:]
  errors = [l for l in err.splitlines() if l.startswith('fcdd_jax: error:')]
  assert len(errors) == 1, err[-3000:]
  assert re.search(pattern, errors[0]), errors[0]
  return errors[0]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('trained') / 'run')
  code, _, _ = run_main(['--config', 'configs/test.py', '--workdir', wd])
  assert code == 0
  return wd


def _copy(trained, tmp_path):
  wd = str(tmp_path / 'run')
  shutil.copytree(trained, wd)
  return wd


def _predict(wd, tmp_path, capfd):
  """fcdd_jax.predict on two small images: (exit code, stdout, stderr)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from fcdd_jax import predict  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  inp = tmp_path / 'images'
  os.makedirs(inp, exist_ok=True)
  for i in range(2):
    Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(inp / f'{i}.png')
  capfd.readouterr()
  code = predict.main(['--workdir', wd, '--input', str(inp), '--output', str(tmp_path / 'pred'), '--mode', 'crop'])
  out, err = capfd.readouterr()
  return code, out, err


def _damage(wd, step):
  support.damage(os.path.join(wd, 'checkpoints', str(step)))


def test_damaged_newest_checkpoint_is_quarantined_and_saved_again(trained, tmp_path, capfd):
  wd = _copy(trained, tmp_path)
  before = json.load(open(os.path.join(wd, 'results.json')))
  _damage(wd, 6)
  code, out, err = run_main(['--config', 'configs/test.py', '--workdir', wd], capfd)
  assert code == 0, err[-3000:]
  warnings = [l for l in (out + err).splitlines() if 'checkpoint step 6' in l]
  assert len(warnings) == 1 and warnings[0].startswith('warning: checkpoint step 6 is unreadable'), out + err
  assert 'resumed from checkpoint step 3' in out and 'Exception ignored' not in err
  assert sorted(os.listdir(os.path.join(wd, 'checkpoints'))) == ['3', '6', 'damaged-6']
  after = json.load(open(os.path.join(wd, 'results.json')))
  assert after['steps'] == 6 and after['image_auc'] == pytest.approx(before['image_auc'], abs=1e-6)
  code, out, err = _predict(wd, tmp_path, capfd)
  assert code == 0 and 'using checkpoint step 6 ' in out and 'unreadable' not in err, err


def test_no_readable_checkpoint_refuses_until_restart_moves_the_run_aside(trained, tmp_path, capfd):
  wd = _copy(trained, tmp_path)
  _damage(wd, 3)
  _damage(wd, 6)
  code, out, err = run_main(['--config', 'configs/test.py', '--workdir', wd], capfd)
  _the_error(err, code, 2, r'no readable checkpoint left in .*damaged-3, damaged-6.*--restart')
  assert 'warning:' not in out + err                                  # said once, in the error line
  assert sorted(os.listdir(os.path.join(wd, 'checkpoints'))) == ['damaged-3', 'damaged-6']   # nothing retrained
  code, _, err = _predict(wd, tmp_path, capfd)
  assert code == 2 and err.count('\n') == 1 and 'no checkpoint in' in err and 'damaged-3' in err
  code, out, err = run_main(['--config', 'configs/test.py', '--workdir', wd, '--restart'], capfd)
  assert code == 0, err[-3000:]
  old = glob.glob(wd + '.old-*')
  assert len(old) == 1 and f'moved the previous run to {old[0]}' in out
  assert sorted(os.listdir(os.path.join(old[0], 'checkpoints'))) == ['damaged-3', 'damaged-6']   # kept
  assert sorted(os.listdir(os.path.join(wd, 'checkpoints'))) == ['3', '6']
  code, out, _ = _predict(wd, tmp_path, capfd)
  assert code == 0 and 'using checkpoint step 6 ' in out


def test_changed_model_is_refused_with_the_fields_and_both_ways_out(trained, tmp_path, capfd):
  wd = _copy(trained, tmp_path)
  config_before = open(os.path.join(wd, 'config.json')).read()
  code, _, err = run_main(['--config', 'configs/test.py', '--workdir', wd, '--config.model.name=FCDD_CNN32_LW3K'], capfd)
  _the_error(err, code, 2, r"model.name 'FCDD_CNN32_S' -> 'FCDD_CNN32_LW3K'.*new --workdir.*--restart")
  assert open(os.path.join(wd, 'config.json')).read() == config_before
  assert sorted(os.listdir(os.path.join(wd, 'checkpoints'))) == ['3', '6']
  code, out, _ = _predict(wd, tmp_path, capfd)
  assert code == 0 and 'using checkpoint step 6 ' in out


def test_second_run_on_a_workdir_in_use_is_refused(trained, tmp_path, capfd):
  wd = _copy(trained, tmp_path)
  code = (f'import sys, time; from fcdd_jax.utils import workdir_lock; '
          f'workdir_lock.Lock.acquire({wd!r}); print("locked", flush=True); time.sleep(60)')
  holder = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    code, _, err = run_main(['--config', 'configs/test.py', '--workdir', wd], capfd)
    import socket  # pylint: disable=g-import-not-at-top
    _the_error(err, code, 2, rf'in use by another fcdd_jax run \(host {socket.gethostname()} pid {holder.pid},')
  finally:
    holder.kill()
    holder.wait()
  assert sorted(os.listdir(os.path.join(wd, 'checkpoints'))) == ['3', '6']
  code, out, _ = _predict(wd, tmp_path, capfd)
  assert code == 0 and 'using checkpoint step 6 ' in out


def test_workdir_that_is_a_file_and_verbose_traceback(tmp_path, capfd):
  f = tmp_path / 'file'
  f.write_text('mine')
  code, _, err = run_main(['--config', 'configs/test.py', '--workdir', str(f)], capfd)
  _the_error(err, code, 2, r'--workdir .*file is an existing file, not a directory')
  assert f.read_text() == 'mine'
  from fcdd_jax.utils import workdir  # pylint: disable=g-import-not-at-top
  with pytest.raises(workdir.WorkdirError):
    run_main(['--config', 'configs/test.py', '--workdir', str(f), '--verbose'], capfd)


def test_nan_with_a_checkpoint_every_step_stops_without_temporary_directories(trained, tmp_path, capfd):  # pylint: disable=unused-argument
  wd = str(tmp_path / 'nan')
  code, _, err = run_main(['--config', 'configs/test.py', '--workdir', wd, '--config.optim.lr=1e6',
                           '--config.checkpoint_every_steps=1'], capfd)
  _the_error(err, code, 3, r'non-finite .* at step \d+')
  names = os.listdir(os.path.join(wd, 'checkpoints'))
  assert not [n for n in names if 'tmp' in n], names
  assert not os.path.exists(os.path.join(wd, 'fcdd_jax.lock'))
  if names:   # the finite checkpoints before the NaN are complete and usable
    code, out, _ = _predict(wd, tmp_path, capfd)
    assert code == 0 and 'training had not finished' in out


_KILL_DURING_SAVE = """
import os, signal, sys, threading
import tests.conftest
from fcdd_jax import main
from fcdd_jax.utils import checkpointing
real_save = checkpointing.Checkpointer.save
def save(self, step, *a, **k):
  if step == 6:   # SIGKILL as soon as orbax's temporary directory of step 6 exists: mid-way through the save
    def killer():
      while not any('6.orbax-checkpoint-tmp' in n for n in os.listdir(self.directory)):
        pass
      os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=killer, daemon=True).start()
  return real_save(self, step, *a, **k)
checkpointing.Checkpointer.save = save
main.main(main.parse_flags(['fcdd_jax', '--allocator=glibc', '--config', 'configs/test.py', '--workdir', {wd!r}]))
"""


def test_kill_during_the_async_save_resumes_from_the_previous_checkpoint(trained, tmp_path, capfd):  # pylint: disable=unused-argument
  wd = str(tmp_path / 'run')
  env = dict(os.environ, JAX_PLATFORMS='cpu')   # and conftest's compilation cache
  proc = subprocess.run([sys.executable, '-c', _KILL_DURING_SAVE.format(root=ROOT, wd=wd)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == -9, proc.stderr[-3000:]
  assert sorted(os.listdir(os.path.join(wd, 'checkpoints'))) == ['3', '6.orbax-checkpoint-tmp']
  assert os.path.exists(os.path.join(wd, 'fcdd_jax.lock'))          # left by the killed run: stale now
  code, out, err = run_main(['--config', 'configs/test.py', '--workdir', wd], capfd)
  assert code == 0, err[-3000:]
  assert 'taking over the stale lock' in out and 'resumed from checkpoint step 3' in out
  assert sorted(os.listdir(os.path.join(wd, 'checkpoints'))) == ['3', '6']
  assert json.load(open(os.path.join(wd, 'results.json')))['steps'] == 6
  code, out, _ = _predict(wd, tmp_path, capfd)
  assert code == 0 and 'using checkpoint step 6 ' in out


def test_disk_full_while_saving_is_one_line(trained, tmp_path, capfd, monkeypatch):
  """A real ENOSPC: the run's workdir on a small tmpfs that a filler file fills up just before step 6 is saved."""
  mnt = tmp_path / 'mnt'
  os.makedirs(mnt)
  r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', str(mnt)], capture_output=True)
  if r.returncode:
    pytest.skip('cannot mount a tmpfs here (not root)')
  try:
    from fcdd_jax.utils import checkpointing  # pylint: disable=g-import-not-at-top
    real_save = checkpointing.Checkpointer.save
    def save(self, step, *a, **k):
      if step == 6:
        self.wait()
        st = os.statvfs(mnt)
        with open(mnt / 'filler', 'wb') as fh:
          fh.write(b'\0' * (st.f_bavail * st.f_frsize - 4096))
      return real_save(self, step, *a, **k)
    monkeypatch.setattr(checkpointing.Checkpointer, 'save', save)
    wd = str(mnt / 'run')
    code, out, err = run_main(['--config', 'configs/test.py', '--workdir', wd, '--config.eval.train_heatmaps=false'],
                              capfd)
    line = _the_error(err, code, 4, r'cannot write checkpoint step 6 to .*no space left')
    assert len(line) < 400 and len(err.splitlines()) <= 2, err[-3000:]     # not hundreds of orbax lines
    assert sorted(os.listdir(os.path.join(wd, 'checkpoints'))) == ['3']   # the half-written step removed
    assert not os.path.exists(os.path.join(wd, 'results.json'))
    code, out, _ = _predict(wd, tmp_path, capfd)
    assert code == 0 and 'using checkpoint step 3 ' in out
  finally:
    subprocess.run(['umount', '-l', str(mnt)], check=False)   # lazy: this process may still hold the event file


def test_config_overrides_without_config_apply_to_the_demo_config(tmp_path, capfd):
  from fcdd_jax import main  # pylint: disable=g-import-not-at-top
  main.parse_flags(['fcdd_jax', '--config.seed=5', '--workdir', '/nonexistent'])
  assert main.FLAGS.config.seed == 5 and main.FLAGS['config'].config_filename.endswith(os.path.join('configs', 'demo.py'))
  capfd.readouterr()
  f = tmp_path / 'file'
  f.write_text('x')
  code, out, err = run_main(['--config.seed=5', '--workdir', str(f)], capfd)   # stops at the workdir check
  assert out.count('overrides apply to the demo config') == 1
  _the_error(err, code, 2, 'is an existing file')


def test_typo_in_a_field_is_quoted_plainly(capsys):
  from fcdd_jax import main  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as e:
    main.parse_flags(['fcdd_jax', '--config', 'configs/test.py', '--config.batch_sise=3'])
  err = capsys.readouterr().err
  assert e.value.code == 2
  assert err.startswith("fcdd_jax: error: unknown config field 'config.batch_sise' (did you mean "
                        "'config.batch_size'?)") and err.count('\n') == 1 and '\\' not in err


def test_folder_where_every_image_is_corrupt_with_skip(tmp_path, capfd):
  root = tmp_path / 'parts'
  for d in ('train/good', 'test/good', 'test/crack'):
    os.makedirs(root / d)
    for i in range(3):
      (root / d / f'{i}.png').write_bytes(b'not a png')
  code, _, err = run_main(['--config', 'configs/test.py', '--workdir', str(tmp_path / 'w'), '--config.data.name=custom',
                           f'--config.data.root={root}', '--config.data.on_bad_image=skip',
                           '--config.model.name=FCDD_CNN224_VGG_NOPT', f'--config.data.cache_dir={tmp_path / "c"}'],
                          capfd)
  _the_error(err, code, 2, rf'none of the 3 images in {root}/train/good can be read')
  assert sorted(os.listdir(root)) == ['test', 'train']     # nothing written into the data folder


def test_every_failure_becomes_one_line_with_its_exit_code():
  import errno  # pylint: disable=g-import-not-at-top
  from fcdd_jax.utils import checkpointing  # pylint: disable=g-import-not-at-top
  from fcdd_jax.pipeline import config_checks
  from fcdd_jax.app import process
  from fcdd_jax.pipeline import train_log
  from fcdd_jax.utils import workdir
  d = lambda e: process.describe(e, '/w')
  assert d(OSError(errno.ENOSPC, 'No space left on device')) == (
      'no space left on the device while writing into /w', 4)
  assert d(OSError(errno.EACCES, 'Permission denied', '/w/results.json')) == (
      'cannot write or read /w/results.json: Permission denied', 4)
  assert d(checkpointing.CheckpointWriteError('cannot write checkpoint step 3 to /w: x')) == (
      'cannot write checkpoint step 3 to /w: x', 4)
  assert d(workdir.WorkdirError('in use\nsecond line'))[1] == 2 and d(workdir.WorkdirError('a\nb'))[0] == 'a'
  assert d(train_log.NonFiniteError('non-finite loss'))[1] == 3
  assert d(workdir.WorkdirAccessError('the workdir /w is not writable: Read-only file system')) == (
      'the workdir /w is not writable: Read-only file system', 4)
  assert d(config_checks.ConfigError('config.x=1 is bad')) == ('config.x=1 is bad', 2)
  assert d(RuntimeError('boom')) == ('unexpected RuntimeError: boom (rerun with --verbose for the traceback)', 1)


def test_bare_command_parses_to_the_demo_config(tmp_path):
  """`python -m fcdd_jax.main` with no --config (README's first command) runs the demo: the flags parse and
  the config is configs/demo.py's, without the override notice."""
  from fcdd_jax import main  # pylint: disable=g-import-not-at-top
  from fcdd_jax.app import cli
  from fcdd_jax.configs import demo  # pylint: disable=g-import-not-at-top
  args = main.parse_flags(['fcdd_jax', '--allocator=glibc', '--workdir', str(tmp_path / 'w')])
  assert not args.defaulted and main.FLAGS.config is None     # main() then loads configs/demo.py itself
  assert cli.load_config_file(cli.DEMO_CONFIG).to_dict() == demo.get_config().to_dict()
  args = main.parse_flags(['fcdd_jax', '--allocator=glibc', '--config.seed=3'])
  assert args.defaulted and main.FLAGS['config'].config_filename == cli.DEMO_CONFIG and main.FLAGS.config.seed == 3
