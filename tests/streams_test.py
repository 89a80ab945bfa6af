"""Random streams of the data layer are named and disjoint (data/streams.py, issue 15 item 4).

Disjointness is shown in two ways: structurally (distinct (purpose, index) -> distinct entropy words, by the
construction the module documents) and empirically (the SeedSequence states of every purpose over realistic
step/row/epoch/example ranges never coincide)."""
import itertools

import numpy as np
import pytest

from fcdd_jax.data import streams

SEEDS = (0, 1, 2, 41, 2**31 + 5, 2**32 - 1)


def _state(words):
  return tuple(np.random.SeedSequence(words).generate_state(4).tolist())


def test_numpy_seed_sequences_do_collide_without_a_fixed_shape():
  """Why the module fixes the shape: trailing zeros and >32-bit ints alias other entropy lists."""
  assert _state([7, 3]) == _state([7, 3, 0])
  assert _state([7, 3, 2**32]) == _state([7, 3, 0, 1])
  # the two collisions of the old ad-hoc seeds (issue 15): offline i == step 255 row i; epoch e == step 24301
  assert _state([5, 0x0FF, 9]) == _state([5, 255, 9]) and 0x5EED == 24301


def test_tags_are_distinct_and_every_stream_has_a_fixed_arity():
  tags = [s.tag for s in streams.STREAMS.values()]
  assert len(set(tags)) == len(tags) and all(0 <= t < 2**32 for t in tags)
  for purpose, s in streams.STREAMS.items():
    words = streams.entropy(3, purpose, *range(len(s.index)))
    assert words == [3, s.tag, *range(len(s.index))]
    with pytest.raises(ValueError, match='takes'):
      streams.entropy(3, purpose, *range(len(s.index) + 1))


def test_out_of_range_values_are_refused():
  with pytest.raises(ValueError, match='seed=-1'):
    streams.rng(-1, 'epoch', 0)
  with pytest.raises(ValueError, match='seed=4294967296'):
    streams.rng(2**32, 'epoch', 0)
  with pytest.raises(ValueError, match='step=4294967296'):
    streams.rng(0, 'example', 2**32, 0)
  with pytest.raises(ValueError, match='unknown'):
    streams.rng(0, 'nope')


def _structurally_distinct(a, b):
  """The argument of the module docstring, checked on entropy lists: one word per value, the tag at position
  1 separates purposes, equal purposes have equal lengths (so no zero padding can alias them)."""
  (pa, ia), (pb, ib) = a, b
  wa, wb = streams.entropy(0, pa, *ia), streams.entropy(0, pb, *ib)
  if pa != pb:
    return wa[1] != wb[1]
  return len(wa) == len(wb) and wa != wb


def test_structure_separates_every_pair_of_purposes():
  samples = [(p, tuple([0] * len(s.index))) for p, s in streams.STREAMS.items()]
  samples += [(p, tuple([2**32 - 1] * len(s.index))) for p, s in streams.STREAMS.items() if s.index]
  for a, b in itertools.combinations(samples, 2):
    assert _structurally_distinct(a, b), (a, b)


def _realistic_indices():
  """Index tuples per purpose over realistic ranges: steps 0..30000 (a dense block and a strided sweep) x rows
  up to 512, epochs 0..30000, example indices 0..60000 (the largest offline set: FMNIST/CIFAR train)."""
  rng = np.random.default_rng(0)
  steps_rows = set(itertools.product(range(300), range(32)))                 # dense start of a run
  steps_rows |= {(int(t), int(r)) for t, r in zip(rng.integers(0, 30001, 20000), rng.integers(0, 512, 20000))}
  steps_rows |= {(t, r) for t in (255, 24301, 0x0FF, 0x5EED, 0x07E, 0x6E7, 0x0E) for r in range(64)}  # old tags
  return {
      'example': sorted(steps_rows),
      'epoch': sorted({(e,) for e in range(0, 30001, 3)} | {(255,), (24301,)}),
      'offline': sorted({(i,) for i in range(0, 60000, 7)} | {(255,), (24301,)}),
      'paste_set': [(i,) for i in range(0, 60000, 11)],
      'refine_subsets': [(k,) for k in range(100)],
      'labelled_pick': [()], 'pollution': [()], 'true_anomalies': [()], 'oe_subset': [()], 'demo_data': [()],
  }


def test_no_two_streams_share_a_state_over_realistic_ranges():
  idx = _realistic_indices()
  assert set(idx) == set(streams.STREAMS), 'a new stream needs realistic ranges here'
  for seed in (0, 1, 2**32 - 1):
    seen = {}
    for purpose, tuples in idx.items():
      for t in tuples:
        st = _state(streams.entropy(seed, purpose, *t))
        assert st not in seen, f'seed {seed}: {purpose}{t} collides with {seen[st]}'
        seen[st] = (purpose, t)
    assert len(seen) == sum(len(v) for v in idx.values())


def test_neighbouring_seeds_give_unrelated_streams():
  """A run with seed s+1 shares no stream state with a run of seed s (entropy words differ at position 0)."""
  a = {_state(streams.entropy(s, 'example', t, r)) for s in SEEDS for t in range(40) for r in range(8)}
  assert len(a) == len(SEEDS) * 40 * 8


def test_rng_is_the_generator_of_the_entropy_words():
  x = streams.rng(9, 'example', 12, 3).random(4)
  y = np.random.default_rng([9, streams.STREAMS['example'].tag, 12, 3]).random(4)
  np.testing.assert_array_equal(x, y)
