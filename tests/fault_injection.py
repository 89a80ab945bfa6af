"""`python -m tests.fault_injection MAIN_ARGS`: `python -m fcdd_jax.main` with a fault at a known training step,
for the multi-process and preemption tests (the production loop has no test hook).

The environment variable FCDD_FAULT_INJECTION says which: 'kill@12' (SIGKILL itself after step 12),
'sigterm@8' (the preemption signal), optionally restricted to one process with ':p<i>' (e.g. 'kill@10:p1').
The signal is sent from `train_log.TrainLog.add`, which the loop calls once per step after dispatching it.
"""
import os
import signal
import time

from absl import app
import jax

from fcdd_jax import main
from fcdd_jax.pipeline import train_log

MODULE = 'tests.fault_injection'   # for launch.local.launch(module=...)


def parse(spec):
  """'kill@12:p1' -> ('kill', 12, 1); '' -> None."""
  if not spec:
    return None
  what, _, rest = spec.partition('@')
  step, _, proc = rest.partition(':p')
  return what, int(step), (int(proc) if proc else None)


def install(spec):
  fault = parse(spec)
  if fault is None:
    return
  what, at, proc = fault
  real_add = train_log.TrainLog.add

  def add(self, step, metrics):
    real_add(self, step, metrics)
    if step == at and proc in (None, jax.process_index()):
      jax.block_until_ready(metrics)
      os.kill(os.getpid(), signal.SIGKILL if what == 'kill' else signal.SIGTERM)
      time.sleep(0.5)  # let the signal handler / preemption notifier run

  train_log.TrainLog.add = add


if __name__ == '__main__':
  install(os.environ.get('FCDD_FAULT_INJECTION', ''))
  app.run(main.main, flags_parser=main.parse_flags)
