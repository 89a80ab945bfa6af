"""Multi-process runs on 127.0.0.1 (a pod in miniature), failures, preemption, and the launch scripts."""
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from launch import local
from launch import sweep
from tests import fault_injection
from tests.paths import ROOT

STEPS = 12
ARGS = ['--config', 'configs/test.py', f'--config.num_train_steps={STEPS}', '--config.log_every_steps=2',
        '--config.checkpoint_every_steps=2', '--config.keep_checkpoints=10']


def _results(workdir):
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


def _single(workdir, devices=4):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  proc = subprocess.run([sys.executable, '-m', 'fcdd_jax.main', *ARGS, '--workdir', workdir], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=400)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return _results(workdir)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  return _single(str(tmp_path_factory.mktemp('single')))


def _assert_same_aucs(a, b):
  assert a['image_auc'] == pytest.approx(b['image_auc'], abs=1e-4)
  assert a['pixel_auc'] == pytest.approx(b['pixel_auc'], abs=1e-4)


def test_four_processes_equal_single_process(reference, tmp_path):
  wd = str(tmp_path / 'four')
  code = local.launch([*ARGS, '--workdir', wd], num_processes=4, devices_per_process=1, timeout=400)
  assert code == 0
  _assert_same_aucs(_results(wd), reference)


def test_killed_peer_makes_the_others_exit_in_bounded_time(tmp_path):
  wd = str(tmp_path / 'peer')
  t0 = time.time()
  code, codes, killed = local.launch(
      [*ARGS, '--config.num_train_steps=100000', '--workdir', wd, '--heartbeat_timeout=10'],
      num_processes=2, devices_per_process=1, timeout=300, grace=180,
      extra_env={'FCDD_FAULT_INJECTION': 'kill@3:p1'}, return_all=True, module=fault_injection.MODULE)
  elapsed = time.time() - t0
  assert code != 0 and codes[1] == -9
  # Process 0 noticed the dead peer and stopped by itself with an error, in bounded time (<= 2 min).
  assert not killed[0] and codes[0] != 0, (codes, killed)
  assert elapsed < 150, f'the surviving process took {elapsed:.0f}s to stop'


def _steps(wd):
  return sorted(int(os.path.basename(d)) for d in glob.glob(os.path.join(wd, 'checkpoints', '[0-9]*'))
                if os.path.basename(d).isdigit())


def test_two_processes_preempted_then_killed_then_restarted_equal_single_process(reference, tmp_path):
  """One workdir, three launches of two processes (two devices each) instead of an uninterrupted two-process run
  plus each fault on a fresh run: a preemption signal to process 0 at step 5 makes every process save the agreed
  step and exit 0; the rerun resumes and is SIGKILLed after step 9 (both processes): an error exit, no
  checkpoint after step 9; the third run resumes from the newest readable checkpoint and ends with the
  single-process run's AUCs (so two processes compute what one does, faults or not)."""
  wd = str(tmp_path / 'faults')
  code = local.launch([*ARGS, '--workdir', wd], num_processes=2, devices_per_process=2, timeout=400,
                      extra_env={'FCDD_FAULT_INJECTION': 'sigterm@5:p0'}, module=fault_injection.MODULE)
  assert code == 0
  assert not os.path.exists(os.path.join(wd, 'results.json'))
  preempted = _steps(wd)
  assert preempted and max(preempted) < 9, preempted   # the agreed step, before the kill below
  code = local.launch([*ARGS, '--workdir', wd], num_processes=2, devices_per_process=2, timeout=400,
                      grace=60, extra_env={'FCDD_FAULT_INJECTION': 'kill@9'}, module=fault_injection.MODULE)
  assert code != 0
  assert not os.path.exists(os.path.join(wd, 'results.json'))
  assert max(_steps(wd)) <= 9
  code = local.launch([*ARGS, '--workdir', wd], num_processes=2, devices_per_process=2, timeout=400)
  assert code == 0, open(os.path.join(wd, 'process_1.log')).read()[-3000:]
  _assert_same_aucs(_results(wd), reference)
  # The figures are written (by process 0); every process took part in the checkpoints up to the last step.
  assert os.path.exists(os.path.join(wd, 'test_samples.png'))
  assert set(range(10, STEPS + 1, 2)) <= set(_steps(wd)), _steps(wd)


def test_single_process_sigterm_preemption(tmp_path):
  wd = str(tmp_path / 'sp')
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1',
             FCDD_FAULT_INJECTION='sigterm@3')
  proc = subprocess.run([sys.executable, '-m', fault_injection.MODULE, *ARGS, '--workdir', wd], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'preemption at step 3' in proc.stdout
  assert os.path.isdir(os.path.join(wd, 'checkpoints', '3'))
  assert not os.path.exists(os.path.join(wd, 'results.json'))


def test_shell_scripts_parse():
  for script in glob.glob(os.path.join(ROOT, 'launch', '*.sh')) + glob.glob(os.path.join(ROOT, 'launch', '*.sbatch')):
    subprocess.run(['bash', '-n', script], check=True)
    if shutil.which('shellcheck'):
      proc = subprocess.run(['shellcheck', script], capture_output=True, text=True)
      assert proc.returncode == 0, proc.stdout


def test_tpu_pod_script_runs_on_all_workers_and_copies_the_workdir_back(tmp_path):
  """launch/tpu_pod.sh against a stand-in `gcloud` that records its arguments: creates the TPU, installs, runs
  the command with --workdir on all workers, copies worker 0's workdir back into ./runs/, deletes the TPU."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  log = tmp_path / 'gcloud.log'
  fake = bin_dir / 'gcloud'
  fake.write_text('#!/bin/bash\nprintf "%s\\n" "$*" >> "$GCLOUD_LOG"\n'
                  '[[ "$*" == *"tpu-vm describe"* ]] && exit 1\nexit 0\n')   # no TPU yet: the script creates it
  fake.chmod(0o755)
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', GCLOUD_LOG=str(log), PROJECT='p', ZONE='z',
             WORKDIR='runs/mvtec', RUN_ARGS='--config configs/mvtec.py --config.data.root=/data/mvtec')
  proc = subprocess.run(['bash', os.path.join(ROOT, 'launch', 'tpu_pod.sh')], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  calls = log.read_text().splitlines()
  assert any('tpu-vm create fcdd-jax --zone=z --accelerator-type=v4-8' in c for c in calls), calls
  run = [c for c in calls if 'fcdd_jax.main' in c]
  assert len(run) == 1 and '--worker=all' in run[0], calls
  assert '--distributed=auto --workdir=runs/mvtec --config configs/mvtec.py --config.data.root=/data/mvtec' in run[0]
  fetch = [c for c in calls if 'scp --recurse' in c]
  assert fetch == ['--project=p compute tpus tpu-vm scp --recurse fcdd-jax:fcdd_jax/runs/mvtec runs/ --zone=z '
                   '--worker=0'], calls
  assert calls.index(fetch[0]) > calls.index(run[0])
  assert 'tpu-vm delete fcdd-jax' in calls[-1]


def test_sweep_ranges_and_dry_run(tmp_path, capsys):
  assert sweep.parse_range('0-3') == [0, 1, 2, 3]
  assert sweep.parse_range('1,4,6-7') == [1, 4, 6, 7]
  with pytest.raises(ValueError):
    sweep.parse_range(',')
  os.makedirs(tmp_path / 'normal_1' / 'seed_0')
  (tmp_path / 'normal_1' / 'seed_0' / 'results.json').write_text('{}')
  sweep.sweep('configs/fmnist.py', str(tmp_path), [0, 1], [0], dry_run=True)
  out = capsys.readouterr().out
  assert 'normal_1/seed_0 already finished' in out
  assert f'--workdir {tmp_path}/normal_0/seed_0 --config.seed=0 --config.data.normal_class=0' in out
