"""Live progress for long phases: a line at least every `every` seconds, with done/total, rate and ETA.

Every long phase of a run (decoding images, compiling, training, evaluation, figures) reports through
`Progress`, so a user never watches a silent terminal for more than half a minute. Lines go to stdout on
process 0 only (other processes pass `enabled=False`).
"""
import time

EVERY_SECONDS = 30.0


def fmt_time(seconds):
  """Compact duration: 45s, 3m05s, 1h02m03s."""
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else (f'{m}m{s:02d}s' if m else f'{s}s')


def say(msg, enabled=True):
  if enabled:
    print(f'fcdd_jax: {msg}', flush=True)


class Progress:
  """Counts work items of one phase and prints `<phase> done/total (rate, ETA)` at most every `every` s.

  The first line is printed once the first `every` seconds have passed (short phases stay silent), the
  last one by `close()` when the phase printed anything or took longer than `every`.
  """

  def __init__(self, phase, total, unit='', every=EVERY_SECONDS, enabled=True, clock=time.monotonic):
    self.phase, self.total, self.unit, self.every, self.enabled = phase, int(total), unit, every, enabled
    self._clock = clock
    self.start = self._last = clock()
    self.done = 0
    self.printed = 0

  def update(self, n=1):
    self.done += n
    if self._clock() - self._last >= self.every:
      self._line()

  def _line(self, final=False):
    now = self._clock()
    el = now - self.start
    rate = self.done / el if el > 0 else 0.0
    msg = f'{self.phase} {self.done}/{self.total}{" " + self.unit if self.unit else ""}'
    if final:
      msg += f' done in {fmt_time(el)}'
    elif rate > 0 and self.total:
      msg += f'  ({fmt_time(el)} elapsed, ETA {fmt_time((self.total - self.done) / rate)})'
    say(msg, self.enabled)
    self._last = now
    self.printed += 1

  def close(self):
    if self.printed or self._clock() - self.start >= self.every:
      self._line(final=True)
    return self._clock() - self.start


def track(iterable, phase, total, unit='', every=EVERY_SECONDS, enabled=True):
  """Yields from `iterable`, reporting progress of `phase` (see `Progress`)."""
  p = Progress(phase, total, unit, every, enabled)
  for item in iterable:
    yield item
    p.update()
  p.close()
