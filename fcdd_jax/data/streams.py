"""Named, disjoint random streams of the data layer (issue 15, item 4).

Every random choice the data layer makes comes from `rng(seed, purpose, *index)`, a NumPy Generator seeded
with the entropy `[seed, TAG, *index]`. `STREAMS` is the one table of purposes: each has its own tag and a
fixed number of index words. Why the fixed shape matters: NumPy's SeedSequence reads each int as 32-bit words
and pads short entropy with zeros, so `[s, a]` and `[s, a, 0]` (or an int >= 2**32 and two small ints) give the
SAME stream. With

* every word in [0, 2**32) (checked: one int = one word),
* a distinct tag per purpose as the second word, and
* a fixed arity per purpose (so equal tags imply equal lengths),

two different (purpose, index) pairs always give different entropy words, whatever the seed, step, row,
epoch or example index: no purpose can replay another's randomness (tests/streams_test.py).

The global training stream (spec §7.1) is a pure function of these streams: epoch e permutes the training
set with `rng(seed, 'epoch', e)`; global row r of step t draws all its choices from `rng(seed, 'example', t, r)`.
"""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Stream:
  tag: int          # second entropy word, unique per purpose
  index: tuple      # names of the index words that follow (fixed arity)
  doc: str


STREAMS = {
    'epoch': Stream(0xFCDD0001, ('epoch',), 'permutation of the (enlarged) training set for one epoch'),
    'example': Stream(0xFCDD0002, ('step', 'row'),
                      'one training example: online anomaly choice and kind, OE image, augmentation'),
    'offline': Stream(0xFCDD0003, ('example',), 'offline supervision: the anomaly made from nominal image i'),
    'labelled_pick': Stream(0xFCDD0004, (), "supervise_mode=other (custom): labelled anomalies drawn for the set"),
    'true_anomalies': Stream(0xFCDD0005, (), 'noise_mode=mvtec(_gt): real test anomalies used for training'),
    'oe_subset': Stream(0xFCDD0006, (), 'data.oe_limit: the fixed subset of the OE images of a run'),
    'demo_data': Stream(0xFCDD0007, (), 'the generated demo textures and defects'),
    'paste_set': Stream(0xFCDD0008, ('example',),
                        'pasted anomalies (CutPaste): the source patch set built once per run, by example'),
    'pollution': Stream(0xFCDD0009, (), 'data.pollution: the true anomalies mixed into the training set'),
    'refine_subsets': Stream(0xFCDD000A, ('round',), 'refinement: the disjoint subsets of one round'),
}

_WORD = 1 << 32


def entropy(seed, purpose, *index):
  """The SeedSequence entropy words `[seed, tag, *index]` of a stream; ValueError on a wrong shape or range."""
  if purpose not in STREAMS:
    raise ValueError(f'random stream {purpose!r} is unknown; known: {", ".join(STREAMS)}')
  s = STREAMS[purpose]
  if len(index) != len(s.index):
    raise ValueError(f'random stream {purpose!r} takes {len(s.index)} index value(s) {s.index}, got {index}')
  words = [seed, s.tag, *index]
  for name, v in zip(('seed', 'tag') + s.index, words):
    v = int(v)
    if not 0 <= v < _WORD:
      raise ValueError(f'random stream {purpose!r}: {name}={v} is outside [0, 2**32)'
                       + (' (config.seed must be a non-negative 32-bit integer)' if name == 'seed' else ''))
  return [int(v) for v in words]


def rng(seed, purpose, *index):
  """np.random.Generator of stream `purpose` at `index` (see STREAMS) for run seed `seed`."""
  return np.random.default_rng(entropy(seed, purpose, *index))
