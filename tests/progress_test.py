"""Progress lines: at most every EVERY_SECONDS, with done/total and an ETA; the train loop reports by time."""
import pytest

from configs import test as test_config
from fcdd_jax.utils import progress
from fcdd_jax.pipeline import train


class Clock:
  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


def test_progress_prints_by_time_with_eta(capsys):
  clock = Clock()
  p = progress.Progress('decoding images', 100, 'images', every=30, clock=clock)
  for i in range(100):
    clock.t += 1.0                      # 1 s per item
    p.update()
  p.close()
  lines = capsys.readouterr().out.strip().splitlines()
  # a line at 30 s, 60 s and 90 s, then the final one
  assert lines[0] == 'fcdd_jax: decoding images 30/100 images  (30s elapsed, ETA 1m10s)'
  assert lines[1].startswith('fcdd_jax: decoding images 60/100 images') and 'ETA 40s' in lines[1]
  assert lines[2].startswith('fcdd_jax: decoding images 90/100 images') and 'ETA 10s' in lines[2]
  assert lines[3] == 'fcdd_jax: decoding images 100/100 images done in 1m40s'
  assert len(lines) == 4


def test_short_phase_is_silent(capsys):
  clock = Clock()
  p = progress.Progress('evaluating test', 5, 'batches', every=30, clock=clock)
  for _ in range(5):
    clock.t += 1
    p.update()
  p.close()
  assert capsys.readouterr().out == ''


def test_fmt_time():
  assert [progress.fmt_time(s) for s in (5, 65, 3725)] == ['5s', '1m05s', '1h02m05s']


def test_train_loop_prints_by_time_not_only_every_log_steps(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(progress, 'EVERY_SECONDS', 0.0)   # every step is "30 s later"
  c = test_config.get_config()
  c.log_every_steps = 1000
  train.train_and_evaluate(c, str(tmp_path))
  out = capsys.readouterr().out
  assert 'compiling the train step and running step 1' in out
  assert 'done in' in out and '(compile + first step)' in out
  steps = [l for l in out.splitlines() if l.startswith('step ')]
  assert [l.split()[1] for l in steps] == [f'{s}/{c.num_train_steps}' for s in range(2, c.num_train_steps + 1)]
  assert all('img/s' in l and 'ETA' in l and 'epoch' in l for l in steps)
