"""Orbax checkpoints: async saves, keep-last-k, restore-or-init with quarantine of damaged steps, preemption.

* A save killed mid-way leaves `<step>.orbax-checkpoint-tmp`, which orbax ignores and removes when the next
  manager opens the directory.
* A finished checkpoint that was damaged later raises on restore. `Checkpointer.restore_latest` moves it to
  `checkpoints/damaged-<step>/` (kept for inspection, never deleted; one warning line) and tries the previous
  one, so the run saves that step afresh (orbax would otherwise skip a step that exists) and the final
  checkpoint is the model that results.json describes. With no readable checkpoint left it raises
  `NoUsableCheckpointError`: starting over is the user's decision (`--restart`).
* A save that fails (disk full, unwritable) raises `CheckpointWriteError` (an OSError, one line) and leaves no
  temporary directory behind; `finish_pending()` lets an aborted run's in-flight save end cleanly.
* `restore_for_inference` (predict, summarize) reads the newest readable checkpoint without changing anything.
Errors are reported in one line each; the TensorStore debris of a failure is filtered by `orbax_noise`.
"""
import errno
import os
import shutil
import sys
import threading
import weakref

import jax
import orbax.checkpoint as ocp

from fcdd_jax.utils import orbax_noise

TMP_MARK = '.orbax-checkpoint-tmp'
DAMAGED_PREFIX = 'damaged-'   # not orbax's '<name>_<step>' form, so orbax never takes it for a step


class NoUsableCheckpointError(ValueError):
  """Checkpoints existed but none can be read; the message says what was moved aside and the ways out."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (disk full, unwritable directory); the message is one line."""


def _is_disk_full(e):
  for x in (e, e.__cause__, e.__context__):
    if x is None:
      continue
    if isinstance(x, OSError) and x.errno == errno.ENOSPC:
      return True
    if 'RESOURCE_EXHAUSTED' in str(x) or 'No space left' in str(x):
      return True
  return False


def _barrier(name):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def _all_ok(ok):
  """True when `ok` holds on every process (a damaged per-process shard must make all processes fall back)."""
  if jax.process_count() == 1:
    return ok
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


def step_dirs(directory):
  """Finished checkpoint steps in `directory` (sorted), without opening a manager."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def damaged_dirs(directory):
  if not os.path.isdir(directory):
    return []
  return sorted(n for n in os.listdir(directory) if n.startswith(DAMAGED_PREFIX))


def remove_tmp_dirs(directory):
  """Removes half-written saves (`*.orbax-checkpoint-tmp*`) of this directory; process 0 only."""
  if jax.process_index() != 0 or not os.path.isdir(directory):
    return
  for n in os.listdir(directory):
    if TMP_MARK in n:
      shutil.rmtree(os.path.join(directory, n), ignore_errors=True)


def _join_orbax_threads(timeout=60):
  """Waits for orbax's background threads (a failed save stops waiting for its other writers, which go on and
  may recreate the temporary directory)."""
  for t in threading.enumerate():
    if t is not threading.current_thread() and type(t).__module__.startswith('orbax'):
      threading.Thread.join(t, timeout)   # (orbax threads re-raise their error from join())


def _one_copy(state):
  """On one CPU process, each array replicated over the devices as its copy on the first device (no data moved).

  Orbax otherwise splits the save of a replicated array across its replicas, one eager slice per array and
  device, each compiled on the first save of a process: pointless when all replicas are one process's memory
  (on a CPU host the same RAM): 11.0–11.7 s -> 9.1–9.4 s for an 8-device run of configs/test.py. Restores take
  their shardings from the target, not from the checkpoint. Several processes, and accelerators (whose
  device-to-host copies the split spreads over the chips), keep orbax's replica-parallel save."""
  if jax.process_count() > 1 or jax.default_backend() != 'cpu':
    return state
  return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) and x.is_fully_replicated
                      and len(x.sharding.device_set) > 1 else x, state)


_OPEN = weakref.WeakSet()


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with items 'state' (pytree) and 'meta' (JSON)."""

  def __init__(self, directory, *, max_to_keep=2, asynchronous=True, on_close=None):
    """`on_close`: called once when the checkpointer is closed (train.py releases the workdir lock)."""
    self.directory = os.path.abspath(directory)
    self._on_close = on_close
    self._pending = None
    self._closed = False
    self._failed = False
    try:
      remove_tmp_dirs(self.directory)   # a save killed mid-way (orbax's own cleanup runs in the background)
      self.manager = ocp.CheckpointManager(
          self.directory,
          item_names=('state', 'meta'),
          options=ocp.CheckpointManagerOptions(
              max_to_keep=max_to_keep,
              enable_async_checkpointing=asynchronous,
              cleanup_tmp_directories=True,
              create=True,
          ),
      )
    except OSError as e:
      raise CheckpointWriteError(f'cannot use the checkpoint directory {self.directory}: '
                                 f'{e.strerror or orbax_noise.short_error(e)}') from None
    _OPEN.add(self)
    orbax_noise.install_debris_filters()

  def all_steps(self):
    return sorted(self.manager.all_steps())

  # -- writing -----------------------------------------------------------------------------------------

  def _write_error(self, e, step):
    """Cleans up after a failed save and returns the one-line CheckpointWriteError to raise."""
    remove_tmp_dirs(self.directory)
    self._pending = None
    self._failed = True   # reported once: later waits (close, finish_pending) stay quiet about it
    why = 'no space left on the device' if _is_disk_full(e) else orbax_noise.short_error(e)
    return CheckpointWriteError(f'cannot write checkpoint step {step} to {self.directory}: {why}')

  def save(self, step, state, meta):
    """Saves asynchronously (every process must call this). An earlier async save that failed raises here."""
    step = int(step)
    self.wait()
    try:
      saved = self.manager.save(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardSave(_one_copy(state)), meta=ocp.args.JsonSave(meta)))
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(e, step) from e
    self._pending = step if saved else self._pending
    return saved

  def wait(self):
    """Blocks until the last save is on disk; raises CheckpointWriteError if it failed."""
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      if self._failed:
        return
      raise self._write_error(e, self._pending) from e
    self._pending = None

  def close(self):
    if self._closed:
      return
    try:
      self.wait()
    finally:
      self._closed = True
      _OPEN.discard(self)
      try:
        self.manager.close()
      except Exception:  # pylint: disable=broad-except  (already reported by wait)
        pass
      if self._failed:   # writers of the failed save run on after orbax reports it: wait, then clean up again
        _join_orbax_threads()
        remove_tmp_dirs(self.directory)
      if self._on_close is not None:
        self._on_close()

  # -- reading -----------------------------------------------------------------------------------------

  def _quarantine(self, step):
    """Moves step `step` to damaged-<step> (a free name); returns the new path."""
    dest = os.path.join(self.directory, f'{DAMAGED_PREFIX}{step}')
    k = 1
    while os.path.exists(dest):
      k += 1
      dest = os.path.join(self.directory, f'{DAMAGED_PREFIX}{step}-{k}')
    if jax.process_index() == 0:
      os.rename(os.path.join(self.directory, str(step)), dest)
    _barrier(f'fcdd_jax_quarantine_{step}')
    self.manager.reload()
    return dest

  def restore_latest(self, target):
    """Restores the newest readable checkpoint into the structure/shardings of `target`.

    Returns (state, meta, step), or (None, None, None) for a directory without checkpoints. Unreadable steps
    are moved to damaged-<step>/ (one warning line each). Raises NoUsableCheckpointError when checkpoints
    existed (now or in an earlier attempt) and none is readable.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    notes = []
    for step in reversed(self.all_steps()):
      restored, err = None, None
      try:
        with orbax_noise.quiet_unraisable():
          restored = self.manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except  (damaged files raise many kinds)
        err = e
      if _all_ok(err is None):
        for n in notes:
          print(n, flush=True)
        return restored['state'], restored['meta'], step
      dest = self._quarantine(step)
      why = orbax_noise.short_error(err) if err else 'on another process'
      notes.append(f'warning: checkpoint step {step} is unreadable ({why}); '
                   f'moved it to {dest} and resuming from an earlier one')
    moved = damaged_dirs(self.directory)
    if moved:
      raise NoUsableCheckpointError(
          f'no readable checkpoint left in {self.directory} (damaged: {", ".join(moved)}); add --restart to move '
          'this run aside and train from scratch, or use another --workdir')
    return None, None, None

  def wait_and_close_quietly(self):
    """After an error elsewhere: let an in-flight save finish (or clean up after it) without raising."""
    try:
      self.close()
      return None
    except CheckpointWriteError as e:
      return str(e)


def finish_pending():
  """Waits for the saves of every open Checkpointer (an aborted run), leaving no temporary directory.

  Returns one-line messages for saves that failed (the caller reports them after its own error)."""
  msgs = []
  for ck in list(_OPEN):
    m = ck.wait_and_close_quietly()
    if m:
      msgs.append(m)
  return msgs


def _local_target(mngr, step):
  """The saved state's structure (from its metadata) as arrays on this process's first device: a checkpoint
  restores for inference whatever device count or mesh trained it (restoring the saved shardings on another
  device count fails with orbax's 'Topology mismatch')."""
  tree = mngr.item_metadata(step)['state']
  tree = getattr(tree, 'tree', tree)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  is_array = lambda m: hasattr(m, 'shape') and hasattr(m, 'dtype')
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device) if is_array(m) else m,
                      tree, is_leaf=is_array)


def newest_readable(ckdir, *, on_unreadable=None):
  """(state, meta, step) of the newest checkpoint of `ckdir` that restores (arrays as saved, no target).

  Read-only. `on_unreadable(step, error)` is called for each step that fails. Raises FileNotFoundError without
  checkpoints and NoUsableCheckpointError when none is readable."""
  orbax_noise.install_debris_filters()
  steps = step_dirs(ckdir)
  if not steps:
    extra = f' (damaged: {", ".join(damaged_dirs(ckdir))})' if damaged_dirs(ckdir) else ''
    raise FileNotFoundError(f'no checkpoint in {ckdir}{extra}: train the run first (or rerun its training '
                            'command to repair it)')
  with orbax_noise.quiet_absl():  # read-only managers log two warnings about their own options
    mngr = ocp.CheckpointManager(ckdir, options=ocp.CheckpointManagerOptions(
        read_only=True, create=False, max_to_keep=None, save_interval_steps=0),
        item_handlers={'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()})
  try:
    for step in reversed(steps):
      try:
        with orbax_noise.quiet_unraisable():
          restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_local_target(mngr, step)),
                                                               meta=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except  (damaged files raise many kinds)
        if on_unreadable is not None:
          on_unreadable(step, e)
        continue
      return restored['state'], restored['meta'] or {}, step
  finally:
    mngr.close()
  raise NoUsableCheckpointError(f'no readable checkpoint in {ckdir} (steps {", ".join(map(str, steps))} are '
                                'damaged); rerun the training command to repair the run')


def restore_for_inference(ckdir, *, prog='fcdd_jax', details=False):
  """The newest readable checkpoint for prediction: returns (state, step) — with details=True
  (state, step, finished), finished = the checkpoint was saved at the run's last step — and prints which step
  it used.

  An unreadable step gets one warning line on stderr and the previous one is used; nothing is changed on disk
  (the training command repairs a run)."""
  def warn(step, e):
    print(f'{prog}: warning: checkpoint step {step} in {ckdir} is unreadable ({orbax_noise.short_error(e)}); '
          'trying an earlier one (rerun the training command to repair the run)', file=sys.stderr, flush=True)
  ckdir = os.path.abspath(ckdir)   # orbax refuses relative paths (--workdir run/ from the command line)
  state, meta, step = newest_readable(ckdir, on_unreadable=warn)
  newest = step_dirs(ckdir)[-1]
  print(f'{prog}: using checkpoint step {step} of {ckdir}'
        + ('' if meta.get('finished', True) else ' (training had not finished)')
        + ('' if step == newest else f', not the newest ({newest}): thresholds in results.json may not fit'),
        flush=True)
  return (state, step, bool(meta.get('finished', True))) if details else (state, step)


_SIGTERM = {'received': False, 'installed': False}


def install_sigterm_handler():
  """Single process: SIGTERM (spot/maintenance/queue preemption) asks the loop to save and stop.

  Multi-process runs use JAX's preemption sync service instead (installed by jax.distributed), which
  makes all processes agree on the step.
  """
  import signal  # pylint: disable=g-import-not-at-top
  if _SIGTERM['installed'] or jax.process_count() > 1:
    return
  def handler(signum, frame):  # pylint: disable=unused-argument
    _SIGTERM['received'] = True
    print('fcdd_jax: SIGTERM received: saving a checkpoint at the next step, then exiting', flush=True)
  try:
    signal.signal(signal.SIGTERM, handler)
    _SIGTERM['installed'] = True
  except ValueError:  # not the main thread (e.g. called from a test runner thread)
    pass


def reached_preemption(step):
  """True when this run should save and stop at `step` (SIGTERM; all processes agree on multi-host)."""
  if jax.process_count() == 1:
    return _SIGTERM['received']
  try:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(multihost_utils.reached_preemption_sync_point(int(step)))
  except Exception:  # pylint: disable=broad-except  (service not initialised: single process)
    return False
