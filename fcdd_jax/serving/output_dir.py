"""The --output folder of predict and export: one call's complete output, never mixed with another call's.

`staged(path, overwrite=..., marker=...)` is the only way these commands write:
  1. lock: an exclusive `flock` on the sibling `.<name>.lock` (released by the kernel if the process dies); a
     second call on the same --output while the first runs is refused at once (`OutputError`);
  2. check, before any work: `path` must be absent or an empty folder; a folder holding an earlier output of
     the same command (its `marker` file, e.g. scores.csv / metadata.json) is refused unless `overwrite`; a
     file, or a folder holding anything else, is always refused (--overwrite never deletes foreign files);
  3. the call writes into a fresh sibling `.<name>.tmp-<pid>-<random>`; on success it is renamed to `path`
     (an earlier output is renamed aside first and deleted after the swap), on any error it is deleted and
     `path` is left as it was. Temporary siblings left by a killed call are removed by the next call.
So `path` only ever holds one call's complete output. Errors are `OutputError`: one line naming the path and
what was expected; the commands exit with `messages.EXIT_FILE_SYSTEM`.
"""
import contextlib
import errno
import fcntl
import glob
import os
import shutil
import tempfile


class OutputError(Exception):
  """--output cannot be used as asked; the message (one line) names the path and the way out."""


def _parent(path):
  return os.path.dirname(os.path.abspath(path))


def _sibling(path, what):
  return os.path.join(_parent(path), f'.{os.path.basename(os.path.abspath(path))}.{what}')


def _make_parent(path, flag):
  parent = _parent(path)
  above = parent
  while not os.path.lexists(above):
    above = os.path.dirname(above)
  if not os.path.isdir(above):
    raise OutputError(f'{flag} {path}: {above} is a file; expected a folder path')
  try:
    os.makedirs(parent, exist_ok=True)
  except OSError as e:
    raise OutputError(f'{flag} {path}: cannot create its parent folder {parent}: {e.strerror or e}; expected a '
                      'path inside a writable folder') from None


@contextlib.contextmanager
def _lock(path, flag):
  """Exclusive flock on `.<name>.lock` next to `path`; OutputError when another process holds it."""
  lock_path = _sibling(path, 'lock')
  while True:
    try:
      fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as e:
      raise OutputError(f'{flag} {path}: cannot write in {_parent(path)} ({e.strerror or e}); expected a '
                        'writable folder') from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = os.pread(fd, 64, 0).decode(errors='replace').strip() or '?'
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
        raise OutputError(f'{flag} {path} is being written by another call (pid {holder}); wait for it to finish '
                          f'or choose another {flag}') from None
      raise OutputError(f'{flag} {path}: cannot lock {lock_path}: {e.strerror or e}') from None
    try:
      same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)   # the previous holder removed the file between our open and flock: take the new one
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    yield
  finally:
    try:
      os.remove(lock_path)
    except OSError:
      pass
    os.close(fd)


def check(path, overwrite, marker, flag='--output'):
  """Raises OutputError unless `path` may receive this call's output (see the module doc, step 2)."""
  if os.path.lexists(path) and not os.path.isdir(path):
    raise OutputError(f'{flag} {path} is an existing file; expected a folder (absent, empty, or an earlier '
                      f'output with --overwrite)')
  if not os.path.isdir(path):
    return
  try:
    names = sorted(os.listdir(path))
  except OSError as e:
    raise OutputError(f'{flag} {path}: cannot list it ({e.strerror or e}); expected a readable folder') from None
  if not names:
    return
  if marker not in names:
    raise OutputError(f'{flag} {path} holds files that are not an earlier output of this command (e.g. '
                      f'{names[0]!r}, no {marker}); expected an absent or empty folder')
  if not overwrite:
    raise OutputError(f'{flag} {path} holds an earlier output ({marker}); pass --overwrite to replace it whole, '
                      f'or choose another {flag}')


def _clean_stale(path):
  """Temporary siblings of calls that were killed (we hold the lock: no other call is writing them)."""
  for stale in glob.glob(glob.escape(_sibling(path, 'tmp-')) + '*') + glob.glob(glob.escape(_sibling(path, 'old-')) + '*'):
    shutil.rmtree(stale, ignore_errors=True)


def _swap(tmp, path):
  """Renames the finished `tmp` to `path`; an earlier output at `path` is renamed aside, then deleted."""
  if os.path.isdir(path) and os.listdir(path):
    old = tempfile.mkdtemp(prefix=os.path.basename(_sibling(path, 'old-')), dir=_parent(path))
    os.rmdir(old)
    os.rename(path, old)
    try:
      os.rename(tmp, path)
    except OSError:
      os.rename(old, path)
      raise
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.rename(tmp, path)   # also replaces an empty folder


@contextlib.contextmanager
def staged(path, overwrite=False, marker='', flag='--output'):
  """Yields a temporary folder to write this call's output into; see the module doc."""
  _make_parent(path, flag)
  with _lock(path, flag):
    check(path, overwrite, marker, flag)
    _clean_stale(path)
    try:
      tmp = tempfile.mkdtemp(prefix=os.path.basename(_sibling(path, f'tmp-{os.getpid()}-')), dir=_parent(path))
      umask = os.umask(0)
      os.umask(umask)
      os.chmod(tmp, 0o777 & ~umask)   # as a folder made by makedirs (mkdtemp makes it private)
    except OSError as e:
      raise OutputError(f'{flag} {path}: cannot write in {_parent(path)} ({e.strerror or e}); expected a '
                        'writable folder') from None
    try:
      yield tmp
      check(path, overwrite, marker, flag)   # nobody may have written there meanwhile without the lock either
      _swap(tmp, path)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
