#!/usr/bin/env python3
"""Run one fcdd_jax job as N processes on this machine (a pod in miniature; what the tests use).

  python launch/local.py --num_processes 2 --devices_per_process 2 -- \\
      --config configs/test.py --workdir runs/mp

Each process gets `--coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=i` and
`XLA_FLAGS=--xla_force_host_platform_device_count=K` (CPU). Only 127.0.0.1 is used. If a process exits
with an error, the others get --grace seconds to notice (JAX's heartbeat) and are then killed; the
launcher's exit code is the first non-zero one. Process 0 prints to this terminal; the others write
<workdir>/process_<i>.log when --workdir is given (else they are silenced).
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _workdir(args):
  for i, a in enumerate(args):
    if a.startswith('--workdir='):
      return a.split('=', 1)[1]
    if a == '--workdir' and i + 1 < len(args):
      return args[i + 1]
  return None


def launch(main_args, num_processes=2, devices_per_process=1, port=None, grace=90, timeout=None,
           python=sys.executable, extra_env=None, return_all=False, module='fcdd_jax.main'):
  """Starts the processes (`python -m <module>`, fcdd_jax.main) and waits; returns the exit code (0 when all
  succeeded).

  With return_all=True returns (code, per-process exit codes, per-process 'killed by the launcher').
  """
  port = port or free_port()
  workdir = _workdir(main_args)
  if workdir:
    os.makedirs(workdir, exist_ok=True)
  procs, logs = [], []
  for i in range(num_processes):
    env = dict(os.environ, JAX_PLATFORMS='cpu',
               XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_per_process}')
    env.update(extra_env or {})
    cmd = [python, '-m', module, *main_args, f'--coordinator_address=127.0.0.1:{port}',
           f'--num_processes={num_processes}', f'--process_id={i}']
    if i == 0:
      out = None
    elif workdir:
      out = open(os.path.join(workdir, f'process_{i}.log'), 'w')
      logs.append(out)
    else:
      out = subprocess.DEVNULL
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                  start_new_session=True))
  start = time.time()
  first_failure = None
  failed_at = None
  try:
    while True:
      codes = [p.poll() for p in procs]
      if all(c is not None for c in codes):
        break
      bad = [c for c in codes if c not in (None, 0)]
      if bad and first_failure is None:
        first_failure, failed_at = bad[0], time.time()
        print(f'launch/local.py: a process exited with code {bad[0]}; the others have {grace}s to stop',
              file=sys.stderr, flush=True)
      if failed_at is not None and time.time() - failed_at > grace:
        print('launch/local.py: killing the remaining processes', file=sys.stderr, flush=True)
        break
      if timeout and time.time() - start > timeout:
        print(f'launch/local.py: timeout after {timeout}s; killing all processes', file=sys.stderr, flush=True)
        first_failure = first_failure or 124
        break
      time.sleep(0.2)
  finally:
    killed = []
    for p in procs:
      killed.append(p.poll() is None)
      if killed[-1]:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    for f in logs:
      f.close()
  codes = [p.returncode for p in procs]
  if first_failure is None:
    first_failure = next((c for c in codes if c != 0), 0)
  if return_all:
    return first_failure, codes, killed
  return first_failure


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--num_processes', type=int, default=2)
  parser.add_argument('--devices_per_process', type=int, default=1)
  parser.add_argument('--port', type=int, default=None)
  parser.add_argument('--grace', type=float, default=90, help='seconds the others get after one process fails')
  parser.add_argument('--timeout', type=float, default=None, help='kill everything after this many seconds')
  parser.add_argument('main_args', nargs=argparse.REMAINDER, help='arguments of python -m fcdd_jax.main (after --)')
  args = parser.parse_args()
  main_args = args.main_args[1:] if args.main_args[:1] == ['--'] else args.main_args
  sys.exit(launch(main_args, args.num_processes, args.devices_per_process, args.port, args.grace, args.timeout))


if __name__ == '__main__':
  main()
