"""Orbax checkpoints: periodic async saves, keep-last-k, restore-or-init with fallback, preemption.

A save killed mid-way leaves `<step>.orbax-checkpoint-tmp`, which orbax ignores; a finished checkpoint that
was damaged later raises on restore, and we fall back to the previous one.
"""
import logging
import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with items 'state' (pytree) and 'meta' (JSON)."""

  def __init__(self, directory, *, max_to_keep=2, asynchronous=True):
    self.directory = os.path.abspath(directory)
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

  def all_steps(self):
    return sorted(self.manager.all_steps())

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, state, meta, *, force=False):
    """Saves asynchronously (every process must call this)."""
    return self.manager.save(
        int(step),
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=force,
    )

  def restore_latest(self, target):
    """Restores the newest readable checkpoint into the structure/shardings of `target`.

    Returns (state, meta, step) or (None, None, None) when there is none. A damaged checkpoint is
    skipped with a warning and the previous one is tried.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    for step in reversed(self.all_steps()):
      try:
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
        )
      except Exception as e:  # pylint: disable=broad-except  (damaged files raise many kinds)
        logging.warning('checkpoint %d in %s is unreadable (%s: %s); trying the previous one',
                        step, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
        print(f'warning: checkpoint {step} in {self.directory} is unreadable '
              f'({type(e).__name__}); falling back to the previous one', flush=True)
        continue
      return restored['state'], restored['meta'], step
    return None, None, None

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


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
