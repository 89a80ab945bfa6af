"""The run directory: one workdir holds one run of one configuration, written by one process at a time.

* `prepare(config, workdir)` — called once at the start of a run: checks that the path can be a workdir,
  takes the lock (process 0), compares the configuration with the run already in it (every process) and
  writes `config.json`. Fields that only say how long to train, how often to log/save and how to evaluate
  may change on resume (recorded in `config_changes.json`); a change of anything else (model, data,
  loss, optimiser, seed, batch) is refused, because the checkpoints hold a model trained with the old values.
* `Lock` — `<workdir>/fcdd_jax.lock` names the holder (host, pid, start time, command). A lock whose process
  is gone (same host: the pid no longer runs; another host: no heartbeat for `STALE_SECONDS`) is stale and is
  taken over with a note. Re-entrant within a process (a library user may call `train_and_evaluate` twice).
* `move_aside(workdir)` — `--restart`: renames the old run to `<workdir>.old-<time>`; nothing is deleted.

Errors are `WorkdirError` (a ValueError): one line naming the path/fields and the ways out.
"""
import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
import threading
import time

LOCK_NAME = 'fcdd_jax.lock'
CONFIG_NAME = 'config.json'
CHANGES_NAME = 'config_changes.json'
STALE_SECONDS = 900          # a lock of another host without a heartbeat for this long is stale
HEARTBEAT_SECONDS = 60

# Fields that may differ from config.json when a run is resumed: they change how long the run trains, how often
# it logs and saves, and how it is evaluated, not the model already in the checkpoints. Everything else
# (model.*, data.*, loss.*, optim.*, seed, batch_size, objective) is fixed for the life of a workdir.
MAY_CHANGE = ('num_epochs', 'num_train_steps', 'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
              'data.cache_dir', 'data.tfds_data_dir')
MAY_CHANGE_PREFIXES = ('eval.',)


class WorkdirError(ValueError):
  """The workdir cannot be used as asked; the message (one line) says why and what to do."""


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
    raise WorkdirError(f'cannot create the workdir {workdir}: {e.strerror or e}') from None
  probe = os.path.join(workdir, f'.write_test.{os.getpid()}')
  try:
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f'the workdir {workdir} is not writable: {e.strerror or e}') from None


def has_trained_model(workdir):
  """True when the workdir holds checkpoints (good or quarantined) or results: its config is then fixed."""
  if os.path.exists(os.path.join(workdir, 'results.json')):
    return True
  ckdir = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(ckdir):
    return False
  return any(n.isdigit() or n.startswith('damaged-') for n in os.listdir(ckdir))


# ----------------------------------------------------------------------------------------------------
# Lock

def _proc_start(pid):
  """Start time of `pid` in clock ticks since boot (Linux), '' when unknown; tells a reused pid apart."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return ''


def _pid_alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _holder_text(h):
  return f"host {h.get('host', '?')} pid {h.get('pid', '?')}, started {h.get('started', '?')}"


@contextlib.contextmanager
def _dir_mutex(path):
  """flock on the directory itself: serialises simultaneous starts (stale-lock takeover) on one machine."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    yield
    return
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
      pass  # a file system without flock: the O_EXCL lock file alone decides
    yield
  finally:
    os.close(fd)


class Lock:
  """An exclusive lock file in the workdir (see the module docstring). Use `acquire`/`release`."""

  _held = {}   # abspath -> Lock held by this process
  _mutex = threading.Lock()

  def __init__(self, workdir):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_NAME)
    self.count = 0
    self._stop = threading.Event()
    self._thread = None

  @classmethod
  def acquire(cls, workdir):
    """Takes (or re-enters) the lock of `workdir`; raises WorkdirError naming the holder when it is in use."""
    path = os.path.abspath(workdir)
    with cls._mutex:
      lock = cls._held.get(path)
      if lock is None:
        lock = cls(path)
        with _dir_mutex(path):
          lock._take()  # pylint: disable=protected-access
        cls._held[path] = lock
      lock.count += 1
      return lock

  def release(self):
    with Lock._mutex:
      self.count -= 1
      if self.count > 0:
        return
      Lock._held.pop(self.workdir, None)
    self._stop.set()
    try:
      if self._read() is not None and self._is_mine(self._read()):
        os.remove(self.path)
    except OSError:
      pass

  def _me(self):
    return {'host': socket.gethostname(), 'pid': os.getpid(), 'pid_start': _proc_start(os.getpid()),
            'started': datetime.datetime.now().isoformat(timespec='seconds'),
            'command': ' '.join(sys.argv)[:500]}

  def _is_mine(self, h):
    return h.get('host') == socket.gethostname() and h.get('pid') == os.getpid()

  def _read(self):
    """The holder dict, {} for an unreadable (half-written) file, None when there is no lock file."""
    for _ in range(5):
      try:
        with open(self.path) as f:
          return json.load(f)
      except FileNotFoundError:
        return None
      except (OSError, ValueError):
        time.sleep(0.1)  # being written by its holder right now
    return {}

  def _stale_reason(self, h):
    """Why the holder `h` no longer runs, or '' when it may still run."""
    if h.get('host') == socket.gethostname() and isinstance(h.get('pid'), int):
      if not _pid_alive(h['pid']):
        return 'that process no longer runs'
      if h.get('pid_start') and _proc_start(h['pid']) and _proc_start(h['pid']) != h['pid_start']:
        return 'its pid now belongs to another process'
      return ''
    try:
      age = time.time() - os.path.getmtime(self.path)
    except OSError:
      return 'the lock file vanished'
    if age > STALE_SECONDS:
      return f'no heartbeat for {age / 60:.0f} min'
    return ''

  def _take(self):
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        h = self._read()
        if h is None:
          continue  # released in between: try again
        if not self._is_mine(h):  # (ours: left by an earlier run of this process that ended with an error)
          why = self._stale_reason(h) if h else ''
          if not why:
            raise WorkdirError(
                f'the workdir {self.workdir} is in use by another fcdd_jax run ({_holder_text(h)}); wait for it '
                f'to finish or use another --workdir (if that run is dead, delete {self.path})') from None
          _say(f'fcdd_jax: note: taking over the stale lock of {_holder_text(h)} ({why})')
          try:
            os.remove(self.path)
          except FileNotFoundError:
            pass
          continue
        fd = os.open(self.path, os.O_WRONLY | os.O_TRUNC)
      except OSError as e:
        raise WorkdirError(f'cannot create the lock file {self.path}: {e.strerror or e}') from None
      with os.fdopen(fd, 'w') as f:
        json.dump(self._me(), f)
      break
    h = self._read()
    if not h or not self._is_mine(h):   # lost a race with a simultaneous start
      raise WorkdirError(f'the workdir {self.workdir} is in use by another fcdd_jax run '
                         f'({_holder_text(h or {})}); use another --workdir')
    self._stop.clear()
    self._thread = threading.Thread(target=self._heartbeat, name='fcdd_jax-lock-heartbeat', daemon=True)
    self._thread.start()

  def _heartbeat(self):
    while not self._stop.wait(HEARTBEAT_SECONDS):
      try:
        os.utime(self.path)
      except OSError:
        return


def release_all():
  """Releases every lock this process holds (at exit, or after an error in the command-line program)."""
  for lock in list(Lock._held.values()):  # pylint: disable=protected-access
    lock.count = 1
    lock.release()


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
    lock = Lock.acquire(workdir)
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
  lock = Lock.acquire(workdir)
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
  lock.path = os.path.join(dest, LOCK_NAME)
  lock.count = 1
  lock.release()   # removes the lock file inside the moved run
  return dest
