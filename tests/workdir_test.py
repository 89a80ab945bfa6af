"""Workdir ownership: the lock (holder, stale detection), configuration compatibility, --restart, bad paths."""
import json
import os
import socket
import subprocess
import sys
import time

import ml_collections
import pytest

from fcdd_jax.pipeline import config_checks
from fcdd_jax.utils import workdir
from fcdd_jax.utils import workdir_lock

from tests.paths import ROOT


def _write_lock(wd, **holder):
  os.makedirs(wd, exist_ok=True)
  with open(os.path.join(wd, workdir_lock.LOCK_NAME), 'w') as f:
    json.dump({'host': socket.gethostname(), 'started': '2026-01-01T00:00:00', **holder}, f)


@pytest.fixture
def sleeper():
  """A live process that is not us (its pid names a running holder)."""
  proc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  yield proc
  proc.kill()
  proc.wait()


def test_lock_is_exclusive_reentrant_and_released(tmp_path):
  wd = str(tmp_path / 'w')
  os.makedirs(wd)
  lock = workdir_lock.Lock.acquire(wd)
  holder = json.loads((tmp_path / 'w' / workdir_lock.LOCK_NAME).read_text())
  assert holder['pid'] == os.getpid() and holder['host'] == socket.gethostname()
  again = workdir_lock.Lock.acquire(wd)          # the same process (train_and_evaluate called twice): re-entered
  assert again is lock and lock.count == 2
  lock.release()
  assert (tmp_path / 'w' / workdir_lock.LOCK_NAME).exists()
  lock.release()
  assert not (tmp_path / 'w' / workdir_lock.LOCK_NAME).exists()


def test_a_live_holder_refuses_in_one_line_naming_host_and_pid(tmp_path, sleeper):
  wd = str(tmp_path / 'w')
  _write_lock(wd, pid=sleeper.pid, pid_start=workdir_lock.proc_start(sleeper.pid))
  with pytest.raises(workdir.WorkdirError) as e:
    workdir_lock.Lock.acquire(wd)
  msg = str(e.value)
  assert '\n' not in msg
  assert f'in use by another fcdd_jax run (host {socket.gethostname()} pid {sleeper.pid}' in msg
  assert 'use another --workdir' in msg
  assert json.loads(open(os.path.join(wd, workdir_lock.LOCK_NAME)).read())['pid'] == sleeper.pid   # untouched


def test_a_lock_held_by_another_process_through_the_module(tmp_path):
  """A second process that really holds the lock (the same code path as a concurrent run)."""
  wd = str(tmp_path / 'w')
  os.makedirs(wd)
  code = (f'import sys, time; sys.path.insert(0, {ROOT!r}); from fcdd_jax.utils import workdir_lock; '
          f'workdir_lock.Lock.acquire({wd!r}); print("locked", flush=True); time.sleep(60)')
  proc = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == 'locked'
    with pytest.raises(workdir.WorkdirError, match=f'pid {proc.pid}'):
      workdir_lock.Lock.acquire(wd)
  finally:
    proc.kill()
    proc.wait()
  # the holder died without releasing: its lock is stale now and is taken over
  lock = workdir_lock.Lock.acquire(wd)
  lock.release()


def test_stale_locks_are_taken_over_with_a_note(tmp_path, capsys):
  wd = str(tmp_path / 'w')
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  _write_lock(wd, pid=dead.pid)
  lock = workdir_lock.Lock.acquire(wd)
  assert 'taking over the stale lock' in capsys.readouterr().out
  assert json.loads(open(os.path.join(wd, workdir_lock.LOCK_NAME)).read())['pid'] == os.getpid()
  lock.release()
  # another host: stale only without a heartbeat for STALE_SECONDS
  _write_lock(wd, host='elsewhere', pid=1)
  with pytest.raises(workdir.WorkdirError, match='host elsewhere pid 1'):
    workdir_lock.Lock.acquire(wd)
  old = time.time() - workdir_lock.STALE_SECONDS - 60
  os.utime(os.path.join(wd, workdir_lock.LOCK_NAME), (old, old))
  lock = workdir_lock.Lock.acquire(wd)
  assert 'no heartbeat' in capsys.readouterr().out
  lock.release()


def test_compare_allows_schedule_logging_and_eval_fields_only(make_config):
  old = json.loads(workdir.config_json(make_config()))
  new = json.loads(workdir.config_json(make_config(**{'num_train_steps': 9, 'eval.num_figure_samples': 4,
                                                  'model.name': 'FCDD_CNN32_LW3K', 'optim.lr': 0.5})))
  refused, allowed, added = config_checks.compare(old, new)
  assert [f for f, _, _ in refused] == ['model.name', 'optim.lr']
  assert [f for f, _, _ in allowed] == ['eval.num_figure_samples', 'num_train_steps']
  assert added == []
  del old['data']['demo_image_size']     # a config.json written before this field existed
  assert [f for f, _, _ in config_checks.compare(old, new)[2]] == ['data.demo_image_size']


def _trained_workdir(path, config):
  os.makedirs(os.path.join(path, 'checkpoints', '3'))
  with open(os.path.join(path, 'config.json'), 'w') as f:
    f.write(workdir.config_json(config))


def test_prepare_refuses_a_changed_model_and_records_allowed_changes(make_config, tmp_path, capsys):
  wd = str(tmp_path / 'w')
  _trained_workdir(wd, make_config())
  before = open(os.path.join(wd, 'config.json')).read()
  with pytest.raises(config_checks.ConfigError) as e:
    workdir.prepare(make_config(**{'model.name': 'FCDD_CNN32_LW3K', 'data.normal_class': 1}), wd,
                    config_checks.check_resume)
  msg = str(e.value)
  assert '\n' not in msg
  assert "model.name 'FCDD_CNN32_S' -> 'FCDD_CNN32_LW3K'" in msg and 'data.normal_class 0 -> 1' in msg
  assert 'new --workdir' in msg and '--restart' in msg
  assert open(os.path.join(wd, 'config.json')).read() == before           # config.json still the trained run's
  assert not os.path.exists(os.path.join(wd, workdir_lock.LOCK_NAME))            # lock given back
  lock = workdir.prepare(make_config(num_train_steps=9), wd, config_checks.check_resume)
  lock.release()
  assert 'num_train_steps 6 -> 9' in capsys.readouterr().out
  changes = json.load(open(os.path.join(wd, workdir.CHANGES_NAME)))
  assert changes[-1]['changes'] == {'num_train_steps': [6, 9]}
  assert json.load(open(os.path.join(wd, 'config.json')))['num_train_steps'] == 9


def test_prepare_without_a_trained_model_takes_any_config(make_config, tmp_path):
  wd = str(tmp_path / 'w')
  os.makedirs(wd)
  with open(os.path.join(wd, 'config.json'), 'w') as f:
    f.write(workdir.config_json(make_config()))    # a run that failed before its first checkpoint
  workdir.prepare(make_config(**{'model.name': 'FCDD_CNN32_LW3K'}), wd, config_checks.check_resume).release()
  assert json.load(open(os.path.join(wd, 'config.json')))['model']['name'] == 'FCDD_CNN32_LW3K'


def test_workdir_that_is_a_file_or_unwritable(tmp_path, monkeypatch):
  f = tmp_path / 'file'
  f.write_text('x')
  with pytest.raises(workdir.WorkdirError, match='is an existing file, not a directory'):
    workdir.check_path(str(f))
  with pytest.raises(workdir.WorkdirError, match='cannot create the workdir .*Not a directory'):
    workdir.check_path(str(f / 'sub'))
  real_open = open
  def failing_open(path, *a, **k):
    if '.write_test.' in str(path):
      raise OSError(30, 'Read-only file system', str(path))
    return real_open(path, *a, **k)
  monkeypatch.setattr('builtins.open', failing_open)
  with pytest.raises(workdir.WorkdirError, match='is not writable: Read-only file system'):
    workdir.check_path(str(tmp_path / 'ro'))


def test_move_aside_keeps_everything_and_respects_the_lock(make_config, tmp_path, sleeper):
  wd = str(tmp_path / 'w')
  _trained_workdir(wd, make_config())
  dest = workdir.move_aside(wd)
  assert dest.startswith(wd + '.old-') and not os.path.exists(wd)
  assert os.path.isdir(os.path.join(dest, 'checkpoints', '3'))
  assert not os.path.exists(os.path.join(dest, workdir_lock.LOCK_NAME))
  assert workdir.move_aside(wd) is None                # nothing to move
  _trained_workdir(wd, make_config())
  dest2 = workdir.move_aside(wd)
  assert dest2 != dest and os.path.isdir(dest)          # a second restart never overwrites the first
  _trained_workdir(wd, make_config())
  _write_lock(wd, pid=sleeper.pid, pid_start=workdir_lock.proc_start(sleeper.pid))
  with pytest.raises(workdir.WorkdirError, match='in use'):
    workdir.move_aside(wd)
  assert os.path.isdir(os.path.join(wd, 'checkpoints', '3'))


def test_config_json_round_trip_keeps_tuples_comparable(make_config):
  c = make_config()
  assert isinstance(c.optim.milestones, tuple)
  refused, allowed, _ = config_checks.compare(json.loads(workdir.config_json(c)), json.loads(workdir.config_json(c)))
  assert not refused and not allowed
  assert isinstance(ml_collections.ConfigDict(json.loads(workdir.config_json(c))), ml_collections.ConfigDict)
