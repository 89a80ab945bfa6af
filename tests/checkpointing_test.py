"""Checkpoint faults on tiny trees (no training): damaged steps, failed and killed saves, inference restore."""
import os
import subprocess
import sys

import numpy as np
import pytest

from fcdd_jax.utils import checkpointing

from tests.paths import ROOT
from tests import support


def _tree(v):
  return {'params': {'w': np.full((4, 3), v, np.float32), 'b': np.arange(3, dtype=np.float32) + v}}


def _save_steps(ckdir, steps, asynchronous=False):
  ck = checkpointing.Checkpointer(ckdir, max_to_keep=5, asynchronous=asynchronous)
  for s in steps:
    ck.save(s, _tree(s), {'step': s, 'finished': s == steps[-1]})
  ck.close()


def test_a_state_replicated_over_the_devices_saves_without_compiling_and_restores_replicated(tmp_path):
  """On one process a replicated array is saved from its first device: nothing is lowered or compiled (orbax's
  replica-parallel save would slice each array once per device, each slice a new program), and it restores
  onto the target's replicated sharding (conftest's 2 devices) with the same values."""
  import jax  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 2
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  tree = {'w': np.arange(8 * 5 * 7, dtype=np.float32).reshape(8, 5, 7), 'b': np.arange(16, dtype=np.float32)}
  state = jax.device_put(tree, replicated)
  compiles = []
  listener = lambda event, _, **kw: compiles.append(event) if event.endswith('jaxpr_to_mlir_module_duration') else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    ck = checkpointing.Checkpointer(str(tmp_path / 'ck'), asynchronous=True)
    assert ck.save(1, state, {'step': 1})
    ck.close()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert not compiles, compiles
  ck = checkpointing.Checkpointer(str(tmp_path / 'ck'), asynchronous=False)
  restored, _, step = ck.restore_latest(state)
  ck.close()
  assert step == 1
  for k in tree:
    assert restored[k].sharding.is_equivalent_to(replicated, tree[k].ndim)
    np.testing.assert_array_equal(np.asarray(restored[k]), tree[k])


def test_damaged_newest_is_quarantined_and_its_step_saved_afresh(tmp_path, capfd):
  ckdir = str(tmp_path / 'ck')
  _save_steps(ckdir, [3, 6])
  support.damage(os.path.join(ckdir, '6'))
  ck = checkpointing.Checkpointer(ckdir, max_to_keep=5, asynchronous=False)
  state, meta, step = ck.restore_latest(_tree(0))
  assert step == 3 and meta['step'] == 3
  np.testing.assert_array_equal(np.asarray(state['params']['w']), _tree(3)['params']['w'])
  out, err = capfd.readouterr()
  lines = [l for l in (out + err).splitlines() if l.strip()]
  assert len(lines) == 1, lines                       # one warning, no coroutine tracebacks, no absl line
  assert lines[0].startswith('warning: checkpoint step 6 is unreadable') and 'damaged-6' in lines[0]
  assert sorted(os.listdir(ckdir)) == ['3', 'damaged-6']
  assert ck.save(6, _tree(60), {'step': 6})           # not skipped as "already exists"
  ck.close()
  state, step = checkpointing.restore_for_inference(ckdir)
  assert step == 6 and float(np.asarray(state['params']['w'])[0, 0]) == 60


def test_no_readable_checkpoint_refuses_to_start_over(tmp_path, capfd):
  ckdir = str(tmp_path / 'ck')
  _save_steps(ckdir, [3, 6])
  support.damage(os.path.join(ckdir, '3'))
  support.damage(os.path.join(ckdir, '6'))
  ck = checkpointing.Checkpointer(ckdir, asynchronous=False)
  with pytest.raises(checkpointing.NoUsableCheckpointError) as e:
    ck.restore_latest(_tree(0))
  msg = str(e.value)
  assert 'no readable checkpoint left' in msg and 'damaged-3' in msg and 'damaged-6' in msg and '--restart' in msg
  out, err = capfd.readouterr()
  assert 'Exception ignored' not in err and 'Traceback' not in err and not out.strip()
  assert sorted(os.listdir(ckdir)) == ['damaged-3', 'damaged-6']     # kept for inspection
  # a second attempt still refuses (it does not silently start from scratch)
  with pytest.raises(checkpointing.NoUsableCheckpointError, match='damaged-3, damaged-6'):
    checkpointing.Checkpointer(ckdir, asynchronous=False).restore_latest(_tree(0))
  with pytest.raises(FileNotFoundError, match='no checkpoint in .*damaged'):
    checkpointing.restore_for_inference(ckdir)


def test_restore_for_inference_says_which_step_and_changes_nothing(tmp_path, capfd):
  ckdir = str(tmp_path / 'ck')
  _save_steps(ckdir, [3, 6])
  support.damage(os.path.join(ckdir, '6'))
  _, step = checkpointing.restore_for_inference(ckdir, prog='fcdd_jax.predict')
  out, err = capfd.readouterr()
  assert step == 3
  assert err.count('\n') == 1 and 'checkpoint step 6' in err and 'unreadable' in err
  assert out.strip() == (f'fcdd_jax.predict: using checkpoint step 3 of {ckdir} (training had not finished), '
                         'not the newest (6): thresholds in results.json may not fit')
  assert sorted(os.listdir(ckdir)) == ['3', '6']      # read-only


def _fake_failing_save(ckdir, step):
  """An orbax save whose background write fails as on a full disk, leaving its temporary directory."""
  def save(self, s, *a, **k):   # pylint: disable=unused-argument
    if s == step:
      os.makedirs(os.path.join(ckdir, f'{s}.orbax-checkpoint-tmp', 'state'))
      raise ValueError(f'RESOURCE_EXHAUSTED: Error writing "params.w/0" in OCDBT database at local file '
                       f'"{ckdir}/{s}.orbax-checkpoint-tmp/state": Failed writing: No space left on device')
    return real_save(self, s, *a, **k)
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  real_save = ocp.CheckpointManager.save
  return save


def test_a_failed_save_is_one_line_and_leaves_no_temporary_directory(tmp_path, monkeypatch):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ckdir = str(tmp_path / 'ck')
  ck = checkpointing.Checkpointer(ckdir, asynchronous=False)
  ck.save(3, _tree(3), {'step': 3})
  monkeypatch.setattr(ocp.CheckpointManager, 'save', _fake_failing_save(ckdir, 6))
  with pytest.raises(checkpointing.CheckpointWriteError) as e:
    ck.save(6, _tree(6), {'step': 6})
  assert str(e.value).startswith(f'cannot write checkpoint step 6 to {ckdir}: no space left on the device')
  assert '\n' not in str(e.value) and isinstance(e.value, OSError)
  assert sorted(os.listdir(ckdir)) == ['3']
  ck.close()


def _mount_tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  r = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)], capture_output=True)
  if r.returncode:
    pytest.skip(f'cannot mount a tmpfs here ({r.stderr.decode().strip()[:80]})')


def test_disk_full_on_a_tiny_filesystem(tmp_path):
  """A real ENOSPC in orbax's asynchronous write (root only: a 256 KiB tmpfs)."""
  mnt = tmp_path / 'mnt'
  _mount_tmpfs(mnt, '256k')
  try:
    ckdir = str(mnt / 'ck')
    ck = checkpointing.Checkpointer(ckdir, asynchronous=True)
    ck.save(1, {'w': np.zeros(1000, np.float32)}, {'step': 1})
    ck.save(2, {'w': np.random.default_rng(0).random(1 << 17).astype(np.float32)}, {'step': 2})   # 512 KiB
    with pytest.raises(checkpointing.CheckpointWriteError) as e:
      ck.wait()
    assert 'cannot write checkpoint step 2' in str(e.value) and 'no space left' in str(e.value)
    assert '\n' not in str(e.value)
    assert sorted(os.listdir(ckdir)) == ['1']        # the good step kept, the half-written one removed
    ck.close()                                       # reported once: closing stays quiet
    state, step = checkpointing.restore_for_inference(ckdir)
    assert step == 1 and np.asarray(state['w']).shape == (1000,)
  finally:
    subprocess.run(['umount', str(mnt)], check=False)


def test_a_save_killed_midway_is_ignored_and_cleaned_up(tmp_path):
  """SIGKILL while the asynchronous write runs: the next manager removes the temporary directory."""
  ckdir = str(tmp_path / 'ck')
  _save_steps(ckdir, [3])
  script = (
      f'import os, signal, sys; sys.path.insert(0, {ROOT!r}); import numpy as np\n'
      'from fcdd_jax.utils import checkpointing\n'
      f'ck = checkpointing.Checkpointer({ckdir!r}, asynchronous=True)\n'
      'ck.save(6, {"w": np.ones((64, 1024, 1024), np.float32)}, {"step": 6})\n'   # 256 MiB: still writing
      f'assert any(".orbax-checkpoint-tmp" in n for n in os.listdir({ckdir!r}))\n'
      'os.kill(os.getpid(), signal.SIGKILL)\n')
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  proc = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == -9, proc.stderr[-2000:]
  assert any('.orbax-checkpoint-tmp' in n for n in os.listdir(ckdir))
  ck = checkpointing.Checkpointer(ckdir, asynchronous=False)
  assert ck.all_steps() == [3] and sorted(os.listdir(ckdir)) == ['3']
  _, meta, step = ck.restore_latest(_tree(0))
  assert step == 3 and meta['step'] == 3
  ck.close()


def test_finish_pending_completes_an_in_flight_save(tmp_path):
  ckdir = str(tmp_path / 'ck')
  ck = checkpointing.Checkpointer(ckdir, asynchronous=True)
  ck.save(1, {'w': np.ones((8, 1024, 1024), np.float32)}, {'step': 1})
  assert checkpointing.finish_pending() == []       # an aborted run: let the save end, then close
  assert sorted(os.listdir(ckdir)) == ['1']
  assert checkpointing.restore_for_inference(ckdir)[1] == 1


def test_a_run_trained_on_two_devices_is_predicted_and_exported_on_one(tmp_path):
  """Issue 28: inference restores onto this process's device whatever device count trained the run (before:
  orbax's 'Topology mismatch', reported as a damaged checkpoint)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  wd = str(tmp_path / 'run')
  proc = support.run_cli(['--config', 'configs/test.py', '--workdir', wd, '--config.num_train_steps=2',
                          '--config.eval.num_figure_samples=2', '--config.eval.train_heatmaps=false'], devices=2)
  assert proc.returncode == 0, proc.stderr[-3000:]
  os.makedirs(tmp_path / 'in')
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / 'in' / 'a.png')
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  for args in (['predict', '--input', str(tmp_path / 'in'), '--output', str(tmp_path / 'pred')],
               ['export', '--output', str(tmp_path / 'exp'), '--format', 'stablehlo']):
    proc = subprocess.run([sys.executable, '-m', f'fcdd_jax.{args[0]}', '--workdir', wd, *args[1:]], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and 'error' not in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert f'using checkpoint step 2 of {wd}' in proc.stdout
