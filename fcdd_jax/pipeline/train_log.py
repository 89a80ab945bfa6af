"""What the training loop reports: mean metrics since the last line (TensorBoard scalars, history.json, a
console line with rate and ETA), the compile time of the first step, and the finiteness check that stops a
run before a NaN/inf is logged or saved."""
import time

import jax
import jax.numpy as jnp
import numpy as np

from fcdd_jax.utils import progress
from fcdd_jax.evaluation import results
from fcdd_jax.pipeline import run


class NonFiniteError(FloatingPointError):
  """A NaN/inf in the loss or norms: the run stops before anything non-finite is saved."""


def check_finite(metrics, step, where, names=None):
  """NonFiniteError when loss, l2_grads or l2_params is NaN/inf. Many models as one program (`names`: one per
  model): the metrics are [M] arrays and the message names the models."""
  checked = {k: np.asarray(v, np.float64) for k, v in metrics.items() if k in ('loss', 'l2_grads', 'l2_params')}
  bad = {k: v for k, v in checked.items() if not np.isfinite(v).all()}
  if not bad:
    return
  if names is None:
    what = ', '.join(f'{k}={float(v)}' for k, v in bad.items())
  else:
    models = sorted({names[i] for v in bad.values() for i in np.flatnonzero(~np.isfinite(v))})
    what = f'{", ".join(bad)} in {models}'
  raise NonFiniteError(
      f'non-finite {what} at step {step} ({where}); the run stops without saving it (lower --config.optim.lr or '
      'check the data); the last good checkpoint is kept')


class TrainLog:
  """Accumulates step metrics (on the devices) and writes their mean at log steps, and whenever waiting for
  the next step would pass `progress.EVERY_SECONDS` since the last line. `timings['t_start']` is when the
  loop began; `timings['compile_seconds']` is set when the first (compiling) step is done."""

  def __init__(self, config, workdir, writer, steps_per_epoch, total_steps, start_step, timings, is_main,
               names=None):
    """names: many models as one program (`multirun`): their names; metrics are then [M] arrays, logged as the
    mean over the models, checked per model, and img/s counts every model's images. workdir None: no
    history.json."""
    self.config, self.workdir, self.writer, self.timings, self.is_main = config, workdir, writer, timings, is_main
    self.names = names
    self.models = len(names) if names else 1
    self.spe, self.total_steps, self.start_step = max(steps_per_epoch, 1), total_steps, start_step
    self.lr_fn = run.learning_rate_fn(config, steps_per_epoch)
    self.acc, self.n, self.history = None, 0, []
    self.t, self.step = time.time(), start_step        # time and step of the last line
    self.t_first = self.t_step = None   # when the first (compiling) step finished: rates and ETA start there

  def add(self, step, metrics):
    self.acc = metrics if self.acc is None else jax.tree.map(jnp.add, self.acc, metrics)
    self.n += 1
    if self.t_first is None:
      jax.block_until_ready(metrics)
      self.t_first = self.t = self.t_step = time.time()
      self.step = step
      seconds = self.t_first - self.timings['t_start']
      self.timings['compile_seconds'] = round(seconds, 2)
      progress.say(f'step {step} done in {progress.fmt_time(seconds)} (compile + first step)', self.is_main)

  def due(self, step):
    """Whether `step` gets a line (call once per step, after `add`)."""
    now = time.time()
    step_seconds, self.t_step = now - self.t_step, now
    is_log = step % self.config.log_every_steps == 0 or step == self.total_steps
    return (is_log or now - self.t + step_seconds >= progress.EVERY_SECONDS) and step > self.step

  def write(self, step, last_metrics):
    """Checks and writes the mean metrics since the last line; `last_metrics` are the step's own."""
    acc = jax.device_get(self.acc)
    check_finite({k: v / self.n for k, v in acc.items()}, step, 'log step', self.names)
    check_finite(jax.device_get(last_metrics), step, 'log step', self.names)
    mean = {k: float(np.mean(v)) / self.n for k, v in acc.items()}
    mean['learning_rate'] = float(self.lr_fn(jnp.asarray(step - 1)))
    self.writer.write_scalars(step, {f'train/{k}': v for k, v in mean.items()})
    now = time.time()
    rate = (step - self.step) / max(now - self.t, 1e-9)
    avg = (step - self.start_step - 1) / max(now - self.t_first, 1e-9)   # since the first step: no compile time
    self.history.append({'step': step, 'epoch': (step - 1) // self.spe, **mean})
    if self.is_main and self.workdir:
      results.append_history(self.workdir, self.history)
    if self.is_main:
      print(f'step {step}/{self.total_steps}  epoch {(step - 1) // self.spe + 1}/{-(-self.total_steps // self.spe)}'
            f'  loss {mean["loss"]:.4f} (nominal {mean["loss_nominal"]:.4f}, anomalous '
            f'{mean["loss_anomalous"]:.4f})  {rate:.2f} steps/s  {rate * self.config.batch_size * self.models:.1f} img/s'
            + (f' ({self.models} models, mean loss)' if self.names else '') + '  '
            f'ETA {progress.fmt_time((self.total_steps - step) / max(avg, 1e-9))}', flush=True)
    self.t, self.step, self.acc, self.n = now, step, None, 0
