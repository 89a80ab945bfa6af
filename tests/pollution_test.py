"""Polluted training sets (data/pollution.py): counts, which rows are anomalies, determinism, MVTec layout."""
import numpy as np
import pytest

from fcdd_jax.data import pollution
from fcdd_jax.pipeline import config_checks


def _tagged(n, tag, shape=(6, 5, 3)):
  """n uint16 images whose first pixel holds a unique tag (images are distinguishable by value)."""
  x = np.zeros((n,) + shape, np.uint16)
  x[:, 0, 0, 0] = np.arange(n) + tag
  return x


@pytest.mark.parametrize('n,r', [(5000, 0.1), (209, 0.1), (100, 0.05), (7, 0.5), (10, 0.01), (300, 0.25)])
def test_count_makes_the_share_of_the_polluted_set(n, r):
  k = pollution.num_anomalies(n, r)
  # reference: the k >= 1 whose share k / (n + k) is closest to r (ties to the larger k)
  ks = np.arange(1, 4 * n + 2)
  ref = ks[np.argmin(np.abs(ks / (n + ks) - r) - 1e-12 * ks)]
  assert k == ref, (k, ref)
  assert pollution.num_anomalies(n, 0) == 0


def test_pollute_mixes_in_exactly_k_pool_images_unlabelled_in_a_seeded_order():
  nominal, pool = _tagged(200, 0), _tagged(80, 1000)
  masks = (np.random.default_rng(0).random((80, 6, 5)) < 0.3).astype(np.uint8)
  p = pollution.pollute(nominal, pool, 0.1, seed=3, pool_masks=masks)
  k = 22                                        # round(0.1 * 200 / 0.9) = round(22.2)
  assert len(p.images) == 222 and p.num_anomalies == k and p.is_anomaly.dtype == bool
  tags = p.images[:, 0, 0, 0].astype(int)
  # every nominal image exactly once, k distinct pool images, and is_anomaly marks exactly those
  assert sorted(tags[~p.is_anomaly]) == list(range(200))
  pool_tags = tags[p.is_anomaly] - 1000
  assert len(set(pool_tags)) == k and set(pool_tags) == set(p.pool_indices.tolist())
  assert (tags >= 1000).tolist() == p.is_anomaly.tolist()
  # origin: nominal index or -1 - pool index
  np.testing.assert_array_equal(np.where(p.origin >= 0, p.origin, 1000 - 1 - p.origin), tags)
  # masks travel with their anomalies; nominal rows have none
  for row in np.flatnonzero(p.is_anomaly):
    np.testing.assert_array_equal(p.masks[row], masks[-1 - p.origin[row]])
  assert not p.masks[~p.is_anomaly].any()
  # mixed in: anomalies are not all at the end
  assert np.flatnonzero(p.is_anomaly).min() < 150
  rec = p.record(0.1)
  assert rec == {'ratio': 0.1, 'num_train': 222, 'num_anomalies': 22, 'actual_ratio': round(22 / 222, 6)}


def test_pollute_is_deterministic_given_the_seed():
  nominal, pool = _tagged(50, 0), _tagged(40, 1000)
  a = pollution.pollute(nominal, pool, 0.2, seed=7)
  b = pollution.pollute(nominal, pool, 0.2, seed=7)
  c = pollution.pollute(nominal, pool, 0.2, seed=8)
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.origin, b.origin)
  assert not np.array_equal(a.origin, c.origin)


def test_zero_pollution_is_the_clean_set_unchanged():
  nominal, pool = _tagged(30, 0), _tagged(10, 1000)
  p = pollution.pollute(nominal, pool, 0.0, seed=0)
  np.testing.assert_array_equal(p.images, nominal)
  assert not p.is_anomaly.any() and p.masks is None and len(p.pool_indices) == 0


def test_too_few_anomalies_is_a_one_line_error_with_the_numbers():
  with pytest.raises(ValueError) as e:
    pollution.pollute(_tagged(209, 0), _tagged(10, 1000), 0.1, seed=0)
  msg = str(e.value)
  assert '\n' not in msg and 'data.pollution=0.1' in msg and 'needs 23' in msg and 'only 10' in msg
  for bad in (1.0, -0.1, 'lots', float('nan')):   # (refused before any data is read)
    with pytest.raises(config_checks.ConfigError, match='data.pollution'):
      config_checks.pollution_ratio(bad)
  with pytest.raises(ValueError, match='shape'):
    pollution.pollute(_tagged(20, 0), _tagged(20, 1000, shape=(4, 4, 3)), 0.1, seed=0)


def test_pollute_from_test_moves_anomalies_out_of_the_test_set():
  nominal = _tagged(100, 0)
  test = _tagged(60, 5000)
  labels = np.array([0, 1] * 30)
  masks = np.zeros((60, 6, 5), np.uint8)
  masks[labels == 1, 2, 2] = 1
  out = pollution.pollute_from_test(nominal, test, labels, 0.1, seed=1, test_masks=masks)
  p = out.polluted
  assert p.num_anomalies == 11 and len(out.removed_test) == 11
  assert (labels[out.removed_test] == 1).all()
  # kept and removed partition the test set; the removed ones are exactly the trained-on anomalies
  assert sorted(out.kept_test.tolist() + out.removed_test.tolist()) == list(range(60))
  assert sorted(p.images[p.is_anomaly, 0, 0, 0].astype(int) - 5000) == sorted(out.removed_test.tolist())
  assert not set(test[out.kept_test, 0, 0, 0].tolist()) & set(p.images[:, 0, 0, 0].tolist())
  assert (p.masks[p.is_anomaly][:, 2, 2] == 1).all() and p.masks[~p.is_anomaly].sum() == 0
  assert (labels[out.kept_test] == 1).sum() == 19
  # all 30 anomalies are not enough for 0.3 (43 needed); using every one would leave none to test with
  with pytest.raises(ValueError, match=r'data.pollution=0.3 needs 43 anomalous test images .* only 30'):
    pollution.pollute_from_test(nominal, test, labels, 0.3, seed=1)
  assert pollution.pollute_from_test(_tagged(29, 0), test, labels, 0.5, seed=1).polluted.num_anomalies == 29
  with pytest.raises(ValueError, match='at least one must stay'):
    pollution.pollute_from_test(_tagged(30, 0), test, labels, 0.5, seed=1)   # needs all 30
  zero = pollution.pollute_from_test(nominal, test, labels, 0.0, seed=1)
  assert len(zero.kept_test) == 60 and zero.polluted.num_anomalies == 0


def test_a_generator_can_be_the_seed():
  nominal, pool = _tagged(40, 0), _tagged(20, 1000)
  a = pollution.pollute(nominal, pool, 0.2, seed=np.random.default_rng([5, 77]))
  b = pollution.pollute(nominal, pool, 0.2, seed=np.random.default_rng([5, 77]))
  np.testing.assert_array_equal(a.origin, b.origin)
  assert a.num_anomalies == 10


def test_an_int_seed_draws_from_the_reserved_pollution_stream():
  from fcdd_jax.data import streams  # pylint: disable=g-import-not-at-top
  nominal, pool = _tagged(50, 0), _tagged(40, 1000)
  a = pollution.pollute(nominal, pool, 0.2, seed=11)
  b = pollution.pollute(nominal, pool, 0.2, seed=streams.rng(11, 'pollution'))
  np.testing.assert_array_equal(a.origin, b.origin)


def test_gather_builds_parallel_arrays_in_the_polluted_row_order():
  nominal, pool = _tagged(40, 0), _tagged(30, 1000)
  p = pollution.pollute(nominal, pool, 0.25, seed=2)
  # a parallel array (the tags as ints, another dtype and shape): row i must be the tag of image i
  nom_tags, pool_tags = np.arange(40) * 10, 7000 + np.arange(30) * 10
  got = p.gather(nom_tags, pool_tags)
  want = np.where(p.images[:, 0, 0, 0] >= 1000, 7000 + (p.images[:, 0, 0, 0].astype(int) - 1000) * 10,
                  p.images[:, 0, 0, 0].astype(int) * 10)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(p.gather(nominal, pool), p.images)


def test_gather_from_the_drawn_rows_only_equals_gather_from_the_pool():
  nominal, pool = _tagged(40, 0), _tagged(30, 1000)
  p = pollution.pollute(nominal, pool, 0.25, seed=4)
  np.testing.assert_array_equal(p.gather(nominal, drawn=pool[p.pool_indices]), p.images)
