"""Refinement bookkeeping (refine.py) against NumPy references written here: subsets, out-of-subset scores,
the dropped samples, precision/recall."""
import numpy as np
import pytest

from fcdd_jax.pipeline import config_checks
from fcdd_jax.pipeline import refine


def srr_consensus(scores, assignment, share):
  """SRR's own rule, kept here for comparison with the out-of-subset rule (not used by fcdd_jax).

  bool [N]: SRR's rule (a sample stays only if every model calls it normal, model k's threshold the
  (1 − share) quantile of its scores) on out-of-subset scores: dropped if any model that did not train on
  it scores it above that model's quantile over the samples it did not train on."""
  s, a = refine._check_scores(scores, assignment)  # pylint: disable=protected-access
  p = config_checks.parse_drop(share)
  if p == 'auto':
    raise ValueError("refine: SRR's consensus rule needs a share, not 'auto'")
  out = np.zeros(s.shape[1], bool)
  for k in range(s.shape[0]):
    held = a != k
    thr = np.quantile(s[k, held], 1.0 - p)
    out |= held & (s[k] > thr)
  return out


@pytest.mark.parametrize('n,k', [(10, 2), (101, 5), (5000, 5), (7, 7)])
def test_split_subsets_disjoint_balanced_deterministic(n, k):
  a = refine.split_subsets(n, k, seed=3)
  assert a.shape == (n,) and set(np.unique(a).tolist()) == set(range(k))
  parts = refine.subset_indices(a, k)
  joined = np.concatenate(parts)
  assert sorted(joined.tolist()) == list(range(n))                   # disjoint and covering
  sizes = [len(p) for p in parts]
  assert max(sizes) - min(sizes) <= 1
  np.testing.assert_array_equal(a, refine.split_subsets(n, k, seed=3))
  if n > k:
    assert not np.array_equal(a, refine.split_subsets(n, k, seed=4))
    assert not np.array_equal(a, refine.split_subsets(n, k, seed=3, round_index=1))
  # not a trivial pattern: subsets are shuffled
  if n >= 100:
    assert not np.array_equal(a, np.arange(n) % k)


def test_split_subsets_errors():
  with pytest.raises(ValueError, match='refine.subsets=1'):
    refine.split_subsets(10, 1, seed=0)
  with pytest.raises(ValueError, match='refine.subsets=11'):
    refine.split_subsets(10, 11, seed=0)


def _reference_oos(scores, assignment):
  """Loops: per model median/MAD over the samples it did not see; per sample the mean z of the others."""
  k_models, n = scores.shape
  z = np.zeros((k_models, n))
  for k in range(k_models):
    held = [scores[k, i] for i in range(n) if assignment[i] != k]
    med = np.median(held)
    mad = np.median([abs(v - med) for v in held]) * 1.4826
    for i in range(n):
      z[k, i] = (scores[k, i] - med) / mad
  out = np.zeros(n)
  for i in range(n):
    judges = [z[k, i] for k in range(k_models) if k != assignment[i]]
    out[i] = sum(judges) / len(judges)
  return out


def test_out_of_subset_scores_match_a_loop_reference():
  rng = np.random.default_rng(0)
  n, k = 97, 4
  a = refine.split_subsets(n, k, seed=1)
  # models on different scales; each scores its own subset low (it fitted it)
  scores = rng.gamma(2.0, 1.0, (k, n)) * np.array([1.0, 10.0, 0.1, 3.0])[:, None]
  for j in range(k):
    scores[j, a == j] *= 0.01
  np.testing.assert_allclose(refine.out_of_subset_scores(scores, a), _reference_oos(scores, a), rtol=1e-12)


def test_own_subset_scores_do_not_count():
  rng = np.random.default_rng(1)
  n, k = 60, 3
  a = refine.split_subsets(n, k, seed=0)
  scores = rng.random((k, n))
  base = refine.out_of_subset_scores(scores, a)
  changed = scores.copy()
  changed[a, np.arange(n)] = 1e6           # every model's verdict on its own samples: ignored
  np.testing.assert_allclose(refine.out_of_subset_scores(changed, a), base)


def test_fixed_share_drops_the_top_scores_exactly():
  x = np.array([0.1, 5.0, 0.3, 5.0, 2.0, -1.0, 0.2, 4.0, 0.0, 0.05])
  d, thr = refine.choose_dropped(x, 0.3)
  # reference: the 3 largest, ties broken by the lower index
  order = sorted(range(10), key=lambda i: (-x[i], i))[:3]
  assert sorted(np.flatnonzero(d).tolist()) == sorted(order) == [1, 3, 7] and thr == 4.0
  d, _ = refine.choose_dropped(x, 0.15)        # round(1.5) = 2: the two tied 5.0
  assert np.flatnonzero(d).tolist() == [1, 3]
  d, thr = refine.choose_dropped(x, 0.04)      # round(0.4) = 0: nothing
  assert not d.any() and thr == float('inf')
  d, _ = refine.choose_dropped(x, '0.3')       # the command line gives strings
  assert d.sum() == 3


def test_auto_drops_above_median_plus_robust_sigmas():
  rng = np.random.default_rng(2)
  x = np.concatenate([rng.normal(0, 1, 900), rng.normal(6, 1, 100)])
  d, thr = refine.choose_dropped(x, 'auto')
  med = np.median(x)
  ref_thr = med + 2.5 * 1.4826 * np.median(np.abs(x - med))
  assert thr == pytest.approx(ref_thr)
  np.testing.assert_array_equal(d, x > ref_thr)
  assert d[900:].mean() > 0.95 and d[:900].mean() < 0.02
  assert refine.choose_dropped(np.zeros(10), 'auto')[0].sum() == 0   # constant scores: nothing is an outlier


def test_refine_round_indices_precision_recall():
  rng = np.random.default_rng(3)
  n_all = 300
  truth = np.zeros(n_all, bool)
  truth[rng.choice(n_all, 30, replace=False)] = True
  current = np.sort(rng.choice(n_all, 200, replace=False))          # a later round: a subset of the set
  k = 4
  a = refine.split_subsets(len(current), k, seed=5)
  scores = rng.normal(0, 1, (k, len(current))) + 3.0 * truth[current][None, :]
  r = refine.refine_round(scores, a, 0.1, indices=current, is_anomaly=truth)
  assert len(r.dropped) == 20 and len(r.kept) == 180
  assert sorted(r.kept.tolist() + r.dropped.tolist()) == current.tolist()
  # reference from the loop scores
  oos = _reference_oos(scores, a)
  top = current[sorted(range(200), key=lambda i: (-oos[i], i))[:20]]
  assert sorted(top.tolist()) == r.dropped.tolist()
  hit = int(truth[r.dropped].sum())
  assert r.dropped_true_anomalies == hit and r.precision == hit / 20
  assert r.recall == hit / int(truth[current].sum())
  assert hit >= 15                                                   # the scores do separate them
  t = truth[current]
  pairs = [(oos[i] > oos[j]) + 0.5 * (oos[i] == oos[j]) for i in np.flatnonzero(t) for j in np.flatnonzero(~t)]
  assert r.score_auc == pytest.approx(np.mean(pairs))                # Mann-Whitney by pairs
  rec = r.record()
  assert rec['dropped'] == 20 and rec['kept'] == 180 and rec['train_size'] == 200
  assert rec['dropped_true_anomalies'] == hit and rec['precision'] == r.precision and rec['recall'] == r.recall
  assert rec['score_auc'] == r.score_auc
  # unknown pollution: no precision/recall keys
  plain = refine.refine_round(scores, a, 0.1, indices=current).record()
  assert 'precision' not in plain and plain['dropped'] == 20
  # nothing dropped / no anomalies: None, not a division by zero
  none = refine.refine_round(scores, a, 0.001, indices=current, is_anomaly=truth)
  assert none.precision is None and none.dropped_true_anomalies == 0
  clean = refine.refine_round(scores, a, 0.1, indices=current, is_anomaly=np.zeros(n_all, bool))
  assert clean.recall is None and clean.precision == 0.0 and clean.score_auc is None


def test_srr_consensus_reference():
  rng = np.random.default_rng(4)
  n, k = 50, 3
  a = refine.split_subsets(n, k, seed=0)
  s = rng.random((k, n))
  got = srr_consensus(s, a, 0.2)
  ref = np.zeros(n, bool)
  for i in range(n):
    for j in range(k):
      if a[i] == j:
        continue
      held = np.array([s[j, t] for t in range(n) if a[t] != j])
      if s[j, i] > np.quantile(held, 0.8):
        ref[i] = True
  np.testing.assert_array_equal(got, ref)


def test_settings_and_score_errors_are_one_line(make_config):
  settings = lambda r, k, p: make_config('test', **{'refine.rounds': r, 'refine.subsets': k, 'refine.drop': str(p)})
  config_checks.check_refine(settings(0, 1, 'nonsense'))      # off: nothing else is checked
  for args, field in [((-1, 5, 0.1), 'refine.rounds'), ((1, 1, 0.1), 'refine.subsets'), ((1, 5, 1.0), 'refine.drop'),
                      ((1, 5, 'most'), 'refine.drop'), ((1, 5, 0.0), 'refine.drop')]:
    with pytest.raises(config_checks.ConfigError, match='config.' + field) as e:
      config_checks.check_refine(settings(*args))
    assert '\n' not in str(e.value)
  with pytest.raises(config_checks.ConfigError, match='more than the 3 training samples'):
    config_checks.check_refine(settings(1, 5, 'auto'), num_train=3)
  assert config_checks.parse_drop('AUTO') == 'auto' and config_checks.parse_drop('0.25') == 0.25
  a = np.array([0, 1, 0, 1])
  with pytest.raises(ValueError, match='non-finite'):
    refine.out_of_subset_scores(np.array([[0, 1, np.nan, 2], [1, 2, 3, 4.]]), a)
  with pytest.raises(ValueError, match='at least 2'):
    refine.out_of_subset_scores(np.ones((1, 4)), np.zeros(4, int))
  with pytest.raises(ValueError, match=r'\[models, samples\]'):
    refine.out_of_subset_scores(np.ones((2, 5)), a)


def test_split_subsets_takes_a_generator():
  a = refine.split_subsets(50, 5, np.random.default_rng([1, 2]))
  np.testing.assert_array_equal(a, refine.split_subsets(50, 5, np.random.default_rng([1, 2])))
  assert np.bincount(a).tolist() == [10] * 5


def test_an_int_seed_splits_with_the_reserved_refine_subsets_stream():
  from fcdd_jax.data import streams  # pylint: disable=g-import-not-at-top
  a = refine.split_subsets(23, 4, seed=9, round_index=2)
  np.testing.assert_array_equal(a, refine.split_subsets(23, 4, seed=streams.rng(9, 'refine_subsets', 2)))
