"""The run directory: one workdir holds one run of one configuration, written by one process at a time.

* `prepare(config, workdir)` — called once at the start of a run: checks that the path can be a workdir,
  takes the lock (process 0), compares the configuration with the run already in it (every process) and
  writes `config.json`. Fields that only say how long to train, how often to log/save and how to evaluate
  may change on resume (recorded in `config_changes.json`); a change of anything else (model, data,
  loss, optimiser, seed, batch) is refused, because the checkpoints hold a model trained with the old values.
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

# Fields that may differ from config.json when a run is resumed: they change how long the run trains, how often
# it logs and saves, and how it is evaluated, not the model already in the checkpoints (model.dtype is the
# compute dtype only: params and optimiser state are float32 in both). Everything else
# (model.*, data.*, loss.*, optim.*, seed, batch_size, objective) is fixed for the life of a workdir.
MAY_CHANGE = ('num_epochs', 'num_train_steps', 'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
              'data.cache_dir', 'data.tfds_data_dir', 'model.dtype')
MAY_CHANGE_PREFIXES = ('eval.',)


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


def may_change(field):
  return field in MAY_CHANGE or field.startswith(MAY_CHANGE_PREFIXES)


def config_json(config):
  """The JSON text written to config.json (also what the comparison sees: tuples become lists)."""
  return config.to_json_best_effort(indent=2, sort_keys=True)


def compare(old, new):
  """(refused, allowed, added) differences between two config dicts: lists of (field, old, new).

  `added` are fields missing from the old config.json (written by an older fcdd_jax); they are taken as their
  current value. Fields that disappeared are ignored."""
  a, b = flatten(old), flatten(new)
  refused, allowed, added = [], [], []
  for k in sorted(b):
    if k not in a:
      added.append((k, None, b[k]))
    elif a[k] != b[k]:
      (allowed if may_change(k) else refused).append((k, a[k], b[k]))
  return refused, allowed, added


def _fmt(changes, limit=6):
  s = ', '.join(f'{k} {o!r} -> {n!r}' for k, o, n in changes[:limit])
  return s + (f' and {len(changes) - limit} more' if len(changes) > limit else '')


def check_config(config, workdir):
  """Raises WorkdirError when `config` differs from the trained run in `workdir` in a fixed field.

  Returns the allowed changes [(field, old, new)] (empty for a new workdir)."""
  path = os.path.join(workdir, CONFIG_NAME)
  if not os.path.exists(path) or not has_trained_model(workdir):
    return []
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(f'{path} is unreadable ({e}); the workdir holds a trained run whose configuration is '
                       'unknown: use another --workdir, or --restart to move this run aside') from None
  new = json.loads(config_json(config))
  refused, allowed, _ = compare(old, new)
  if refused:
    raise WorkdirError(
        f'the workdir {workdir} holds a run trained with another configuration ({_fmt(refused)}); use a new '
        f'--workdir, or add --restart to move the old run to {workdir.rstrip(os.sep)}.old-<time> and train '
        'from scratch')
  return allowed


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
  _say(f'fcdd_jax: resuming with changed settings: {_fmt(allowed, 20)} (recorded in {CHANGES_NAME})')


def _write_atomic(path, text):
  tmp = f'{path}.tmp.{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------
# The one call at the start of a run, and --restart

def prepare(config, workdir, *, is_main=True):
  """Makes `workdir` ready for a run of `config`; returns the Lock (None on processes > 0).

  Every process checks the configuration (so that all of them stop with the same message); process 0 also
  takes the lock and writes config.json."""
  lock = None
  if is_main:
    check_path(workdir)
    lock = workdir_lock.Lock.acquire(workdir)
  try:
    allowed = check_config(config, workdir)
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
