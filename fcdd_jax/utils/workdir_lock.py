"""The workdir lock: `<workdir>/fcdd_jax.lock` names the holder (host, pid, start time, command).

A lock whose process is gone (same host: the pid no longer runs; another host: no heartbeat for
`STALE_SECONDS`) is stale and is taken over with a note. Re-entrant within a process (a library user may call
`train_and_evaluate` twice). `workdir.prepare` and `workdir.move_aside` take it; `release_all` gives back
every lock of the process (at exit, or after an error in the command-line program).

Errors are `WorkdirError` (a ValueError): one line naming the path and the ways out.
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
STALE_SECONDS = 900          # a lock of another host without a heartbeat for this long is stale
HEARTBEAT_SECONDS = 60


class WorkdirError(ValueError):
  """The workdir cannot be used as asked; the message (one line) says why and what to do."""


class WorkdirAccessError(WorkdirError):
  """The file system refuses the workdir (cannot create or write it): exit code 4, not 2."""
  exit_code = 4


def proc_start(pid):
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
    return {'host': socket.gethostname(), 'pid': os.getpid(), 'pid_start': proc_start(os.getpid()),
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
      if h.get('pid_start') and proc_start(h['pid']) and proc_start(h['pid']) != h['pid_start']:
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
          print(f'fcdd_jax: note: taking over the stale lock of {_holder_text(h)} ({why})', flush=True)
          try:
            os.remove(self.path)
          except FileNotFoundError:
            pass
          continue
        fd = os.open(self.path, os.O_WRONLY | os.O_TRUNC)
      except OSError as e:
        raise WorkdirAccessError(f'cannot create the lock file {self.path}: {e.strerror or e}') from None
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
