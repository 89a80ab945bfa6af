"""Training-data refinement with an ensemble of one-class models (issue 16), the bookkeeping only.

Yoon, Sohn, Li, Arik, Lee, Pfister, "Self-supervise, Refine, Repeat: Improving Unsupervised Anomaly
Detection" (SRR, arXiv:2106.06115, TMLR 2022), §3: when the unlabelled training set holds anomalies, split
it into K disjoint subsets, train one one-class model per subset, score every training sample, drop the
samples that score as anomalous, train again on the refined set; repeat. SRR thresholds each model k at the
(100 − γ) percentile of its scores on the training data and keeps a sample only if every model calls it
normal (a consensus of the K models); γ is a hyper-parameter (the paper studies it against the true
anomaly ratio). (Summarised from the paper; its text was not available offline to re-check details.)
This module does the same with two deliberate changes, both because a model scores the samples it was
trained on too low (it has fitted them), which makes its verdict on them worthless:

* each sample is judged only by the K − 1 models that did NOT train on it (out-of-subset scores);
* the judges' scores are put on one scale, a robust z-score per model (median and MAD over the samples that
  model did not train on), and averaged: `out_of_subset_scores`. (tests/refine_test.py keeps SRR's
  any-model-flags rule on the same out-of-subset scores, `srr_consensus`, for comparison.)

Which samples go (`choose_dropped`): `refine.drop = p` drops the round(p·N) highest out-of-subset scores
(ties: lower index first), so the share is exact; `refine.drop = auto` drops the samples whose score is
more than AUTO_Z robust standard deviations above the median of the scores (median + 2.5·1.4826·MAD, the
moderately conservative outlier rule recommended by Leys et al., "Detecting outliers: Do not use standard
deviation around the mean, use absolute deviation around the median", J. Exp. Soc. Psych. 2013); at most
half the set can go, by construction. SRR has no automatic rule (as far as summarised above). Everything here is pure NumPy and
deterministic given the seed; training and scoring the models is the caller's job (train/multirun).
"""
import dataclasses
from typing import Optional

import numpy as np

from fcdd_jax.evaluation import metrics as evaluation
from fcdd_jax.data import streams

AUTO_Z = 2.5
MAD_TO_STD = 1.4826   # MAD of a normal distribution times this = its standard deviation


def split_subsets(n, k, seed, round_index=0):
  """int32 [n]: the subset (0..k-1) of every training sample; disjoint, sizes differ by at most one, a
  seeded permutation per (seed, round) so each round splits differently. seed: the run seed (an int; the draw
  comes from the data layer's reserved stream `streams.rng(seed, 'refine_subsets', round_index)`) or a
  np.random.Generator used as is (round_index is then the caller's business)."""
  n, k = int(n), int(k)
  if k < 2 or n < k:
    raise ValueError(f'refine.subsets={k}: need 2 <= subsets <= number of training samples ({n})')
  rng = (seed if isinstance(seed, np.random.Generator)
         else streams.rng(int(seed), 'refine_subsets', int(round_index)))
  out = np.empty(n, np.int32)
  out[rng.permutation(n)] = np.arange(n) % k
  return out


def subset_indices(assignment, k):
  """The sample indices of every subset, ascending: [array of subset 0, ..., subset k-1]."""
  a = np.asarray(assignment)
  return [np.flatnonzero(a == j) for j in range(int(k))]


def _robust_scale(x):
  """(median, robust std) of x: MAD·1.4826, falling back to the mean absolute deviation, then 1."""
  med = float(np.median(x))
  dev = np.abs(x - med)
  s = MAD_TO_STD * float(np.median(dev))
  if not s > 0:
    s = float(dev.mean()) * np.sqrt(np.pi / 2)
  return med, (s if s > 0 else 1.0)


def _check_scores(scores, assignment):
  s = np.asarray(scores, np.float64)
  a = np.asarray(assignment)
  if s.ndim != 2 or a.shape != (s.shape[1],):
    raise ValueError(f'refine: scores must be [models, samples] and the assignment [samples]; got {s.shape} and '
                     f'{a.shape}')
  if s.shape[0] < 2:
    raise ValueError(f'refine: {s.shape[0]} model(s); out-of-subset scores need at least 2')
  if a.min() < 0 or a.max() >= s.shape[0]:
    raise ValueError(f'refine: subset ids must be in 0..{s.shape[0] - 1}; got {a.min()}..{a.max()}')
  bad = np.flatnonzero(~np.isfinite(s).all(1))
  if len(bad):
    raise ValueError(f'refine: model(s) {bad.tolist()} gave non-finite scores')
  return s, a


def normalized_scores(scores, assignment):
  """float64 [K, N]: every model's scores as robust z-scores (median, MAD) over the samples it did not
  train on (its subset excluded: it has fitted those)."""
  s, a = _check_scores(scores, assignment)
  out = np.empty_like(s)
  for k in range(s.shape[0]):
    med, sd = _robust_scale(s[k, a != k])
    out[k] = (s[k] - med) / sd
  return out


def out_of_subset_scores(scores, assignment):
  """float64 [N]: per sample the mean of the normalized scores of the K − 1 models that did not train on it."""
  z = normalized_scores(scores, assignment)
  a = np.asarray(assignment)
  judge = np.arange(z.shape[0])[:, None] != a[None, :]
  return (z * judge).sum(0) / judge.sum(0)


def choose_dropped(oos, drop):
  """(bool [N] dropped, threshold): the round(p·N) largest scores for a share p (threshold = the smallest
  dropped score; ties: lower index first), or the scores above median + AUTO_Z·robust std for 'auto'."""
  x = np.asarray(oos, np.float64)
  p = drop if drop == 'auto' else float(drop)   # (checked by config_checks.parse_drop)
  dropped = np.zeros(len(x), bool)
  if p == 'auto':
    med, sd = _robust_scale(x)
    thr = med + AUTO_Z * sd
    dropped[:] = x > thr
    return dropped, float(thr)
  m = int(np.floor(p * len(x) + 0.5))
  order = np.argsort(-x, kind='stable')
  dropped[order[:m]] = True
  return dropped, (float(x[order[m - 1]]) if m else float('inf'))


@dataclasses.dataclass(frozen=True)
class Round:
  """One refinement round. kept / dropped: indices into the ORIGINAL training set (ascending);
  scores [N]: the out-of-subset score of every sample of this round's set (in `indices` order)."""
  indices: np.ndarray
  kept: np.ndarray
  dropped: np.ndarray
  scores: np.ndarray
  threshold: float
  dropped_true_anomalies: Optional[int] = None
  precision: Optional[float] = None
  recall: Optional[float] = None
  score_auc: Optional[float] = None   # ROC AUC of the out-of-subset scores for the true anomalies of the set

  def record(self):
    """The results.json entry of this round: refinement.rounds[i]."""
    r = {'train_size': int(len(self.indices)), 'dropped': int(len(self.dropped)), 'kept': int(len(self.kept)),
         'threshold': self.threshold if np.isfinite(self.threshold) else None}
    if self.dropped_true_anomalies is not None:
      r.update(dropped_true_anomalies=self.dropped_true_anomalies, precision=self.precision, recall=self.recall,
               score_auc=self.score_auc)
    return r


def refine_round(scores, assignment, drop, *, indices=None, is_anomaly=None):
  """One round: out-of-subset scores of the current set (scores [K, N] of all K models on the N current
  samples, assignment [N] their subsets) -> the samples kept. indices [N]: the current samples' indices in the
  original training set (default 0..N-1); is_anomaly: bool over the ORIGINAL set when the pollution is known
  (then precision = true anomalies among the dropped / dropped, recall = dropped true anomalies / true
  anomalies in this round's set; None where a denominator is 0; score_auc: how well the out-of-subset scores
  rank the true anomalies above the rest, whatever the threshold, None without both kinds)."""
  oos = out_of_subset_scores(scores, assignment)
  idx = np.arange(len(oos)) if indices is None else np.asarray(indices, np.int64)
  if idx.shape != oos.shape:
    raise ValueError(f'refine: {len(idx)} indices for {len(oos)} scored samples')
  dropped, thr = choose_dropped(oos, drop)
  extra = {}
  if is_anomaly is not None:
    truth = np.asarray(is_anomaly, bool)[idx]
    hit = int((dropped & truth).sum())
    extra = dict(dropped_true_anomalies=hit,
                 precision=hit / int(dropped.sum()) if dropped.any() else None,
                 recall=hit / int(truth.sum()) if truth.any() else None,
                 score_auc=evaluation.roc_auc(truth, oos) if 0 < truth.sum() < len(truth) else None)
  return Round(indices=idx, kept=np.sort(idx[~dropped]), dropped=np.sort(idx[dropped]), scores=oos,
               threshold=thr, **extra)
