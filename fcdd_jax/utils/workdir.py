"""The run directory: one workdir holds one run of one configuration, written by one process at a time.

* `prepare(config, workdir, config_checks.check_resume)` — called once at the start of a run: checks that the
  path can be a workdir, takes the lock (process 0), has the configuration compared with the run already in
  it (every process; which fields may change on resume is `config_checks`'s rule, recorded in
  `config_changes.json`) and writes `config.json`.
* The lock (`workdir_lock.Lock`, `<workdir>/fcdd_jax.lock`) keeps a second run off a workdir in use.
* `move_aside(workdir)` — `--restart`: renames the old run to `<workdir>.old-<time>`; nothing is deleted.

Errors are `WorkdirError` (a ValueError): one line naming the path/fields and the ways out.
"""
import datetime
import json
import os
import time

from fcdd_jax.utils import workdir_lock
from fcdd_jax.utils.workdir_lock import WorkdirAccessError   # cannot create/write the workdir (exit code 4)
from fcdd_jax.utils.workdir_lock import WorkdirError   # the error of the whole workdir handling (lock included)

CONFIG_NAME = 'config.json'
CHANGES_NAME = 'config_changes.json'

def _say(msg):
  print(msg, flush=True)


# ----------------------------------------------------------------------------------------------------
# Checks of the path

def check_path(workdir):
  """Creates `workdir` if needed; raises WorkdirError when it is a file or cannot be written."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f'--workdir {workdir} is an existing file, not a directory; choose another path')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise WorkdirAccessError(f'cannot create the workdir {workdir}: {e.strerror or e}') from None
  probe = os.path.join(workdir, f'.write_test.{os.getpid()}')
  try:
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise WorkdirAccessError(f'the workdir {workdir} is not writable: {e.strerror or e}') from None


def has_trained_model(workdir):
  """True when the workdir holds checkpoints (good or quarantined) or results: its config is then fixed."""
  if os.path.exists(os.path.join(workdir, 'results.json')):
    return True
  ckdir = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(ckdir):
    return False
  return any(n.isdigit() or n.startswith('damaged-') for n in os.listdir(ckdir))


# ----------------------------------------------------------------------------------------------------
# Configuration compatibility

def flatten(d, prefix=''):
  """{'a': {'b': 1}} -> {'a.b': 1} (config field paths)."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def config_json(config):
  """The JSON text written to config.json (also what the comparison sees: tuples become lists)."""
  return config.to_json_best_effort(indent=2, sort_keys=True)


def fmt_changes(changes, limit=6):
  """'field old -> new, ...' of at most `limit` changes (and how many more)."""
  s = ', '.join(f'{k} {o!r} -> {n!r}' for k, o, n in changes[:limit])
  return s + (f' and {len(changes) - limit} more' if len(changes) > limit else '')


def record_changes(workdir, allowed):
  """Appends allowed changes to config_changes.json and says so in one line."""
  if not allowed:
    return
  path = os.path.join(workdir, CHANGES_NAME)
  log = []
  if os.path.exists(path):
    try:
      with open(path) as f:
        log = json.load(f)
    except (OSError, ValueError):
      log = []
  log.append({'time': datetime.datetime.now().isoformat(timespec='seconds'),
              'changes': {k: [o, n] for k, o, n in allowed}})
  _write_atomic(path, json.dumps(log, indent=1))
  _say(f'fcdd_jax: resuming with changed settings: {fmt_changes(allowed, 20)} (recorded in {CHANGES_NAME})')


def _write_atomic(path, text):
  tmp = f'{path}.tmp.{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------
# The one call at the start of a run, and --restart

def prepare(config, workdir, check_resume, *, is_main=True):
  """Makes `workdir` ready for a run of `config`; returns the Lock (None on processes > 0).

  `check_resume(config, workdir) -> allowed changes` (`config_checks.check_resume`: raises for a workdir that
  holds a run of another configuration) runs on every process, so that all of them stop with the same message,
  after process 0 has taken the lock; process 0 then writes config.json."""
  lock = None
  if is_main:
    check_path(workdir)
    lock = workdir_lock.Lock.acquire(workdir)
  try:
    allowed = check_resume(config, workdir)
    if is_main:
      record_changes(workdir, allowed)
      _write_atomic(os.path.join(workdir, CONFIG_NAME), config_json(config))
  except BaseException:
    if lock is not None:
      lock.release()
    raise
  return lock


def move_aside(workdir):
  """--restart: renames a non-empty `workdir` to `<workdir>.old-<YYYYmmdd-HHMMSS>`; returns the new path or None.

  Refuses (WorkdirError) while another run holds the workdir. Nothing is deleted."""
  if not os.path.isdir(workdir) or not os.listdir(workdir):
    return None
  lock = workdir_lock.Lock.acquire(workdir)
  base = f'{os.path.abspath(workdir).rstrip(os.sep)}.old-{time.strftime("%Y%m%d-%H%M%S")}'
  dest, k = base, 1
  while os.path.exists(dest):
    k += 1
    dest = f'{base}-{k}'
  try:
    os.rename(workdir, dest)
  except OSError as e:
    lock.release()
    raise WorkdirError(f'--restart: cannot move {workdir} to {dest}: {e.strerror or e}') from None
  lock.path = os.path.join(dest, workdir_lock.LOCK_NAME)
  lock.count = 1
  lock.release()   # removes the lock file inside the moved run
  return dest
