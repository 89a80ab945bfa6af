"""Polluted training sets (issue 16): true anomalies mixed, unlabelled, into a nominal training set.

`config.data.pollution = r` asks for a training set of which a share r is anomalous: to the n nominal
training images it adds k = round(r·n / (1 − r)) true anomalies (at least 1 when r > 0), so that
k / (n + k) ≈ r (the nominal images are all kept; r = 0.1 with n = 5000 CIFAR-10 images adds 556). The
anomalies enter as nominal training data (label 0: the training never sees which they are); the returned
record `is_anomaly` says which rows are true anomalies, for the refinement's precision/recall.

Where the anomalies come from is the caller's choice (issue 16): the other classes' training images for
one-vs-rest data (`pollute`), the anomalous test images for MVTec-layout data, which then leave the test set
(`pollute_from_test`), the demo's generated defective textures (`pollute`). Pure NumPy, deterministic given
the seed: the same (seed, inputs) give the same set on every process.
"""
import dataclasses
from typing import Optional

import numpy as np

from fcdd_jax.data import streams

FIELD = 'data.pollution'


def ratio_of(config):
  """config.data.pollution as a float (0.0 when the field is absent); its range is `config_checks`'s to check."""
  return float(config.data.get('pollution', 0.0) or 0.0)


def num_anomalies(num_nominal, ratio):
  """k anomalies so that k / (num_nominal + k) is the ratio, rounded: round(r·n / (1 − r)), at least 1 when
  r > 0 (so a requested pollution never silently vanishes on a small set). `ratio`: in [0, 1)
  (`config_checks.pollution_ratio`)."""
  r = float(ratio)
  if r == 0.0:
    return 0
  return max(1, int(np.floor(r * int(num_nominal) / (1.0 - r) + 0.5)))


@dataclasses.dataclass(frozen=True)
class Polluted:
  """A polluted training set. Rows are in a seeded random order (the nominal order when nothing is added).

  images [n+k, ...]: the training images; masks [n+k, H, W] or None: the anomalies' masks (zeros on nominal
  rows), when the pool had masks; is_anomaly bool [n+k]: true anomalies (never a training label);
  origin int [n+k]: the row's index in the nominal array (>= 0) or -1 − its index in the pool (< 0);
  pool_indices int [k]: the pool rows used, in the order they were drawn. `gather` builds any array parallel
  to the images (a second resolution, original sizes) in the same row order."""
  images: np.ndarray
  masks: Optional[np.ndarray]
  is_anomaly: np.ndarray
  origin: np.ndarray
  pool_indices: np.ndarray

  @property
  def num_anomalies(self):
    return int(self.is_anomaly.sum())

  def gather(self, nominal, pool=None, drawn=None):
    """[n+k, ...]: row i is nominal[origin[i]] or pool[-1 - origin[i]], for arrays parallel to the nominal
    images and the pool (e.g. the same images at another size). Instead of the whole pool, `drawn` may hold
    only the drawn pool rows, in `pool_indices` order (so a large pool need not be read)."""
    nominal = np.asarray(nominal)
    out = np.empty((len(self.origin),) + nominal.shape[1:], nominal.dtype)
    nom = self.origin >= 0
    out[nom] = nominal[self.origin[nom]]
    if (~nom).any():
      rows = -1 - self.origin[~nom]
      if drawn is not None:
        pos = {int(v): i for i, v in enumerate(self.pool_indices)}
        out[~nom] = np.asarray(drawn)[[pos[int(r)] for r in rows]]
      else:
        out[~nom] = np.asarray(pool)[rows]
    return out

  def record(self, ratio):
    """The facts results.json keeps: requested and actual share, counts."""
    n = len(self.is_anomaly)
    return {'ratio': float(ratio), 'num_train': int(n), 'num_anomalies': self.num_anomalies,
            'actual_ratio': round(self.num_anomalies / n, 6) if n else 0.0}


def _shape_check(nominal, pool, what):
  if len(pool) and tuple(pool.shape[1:]) != tuple(nominal.shape[1:]):
    raise ValueError(f'{FIELD}: the {what} have shape {tuple(pool.shape[1:])}, the nominal training images '
                     f'{tuple(nominal.shape[1:])}; they must match')


def pollute(nominal, pool, ratio, *, seed, pool_masks=None, what='anomalies'):
  """Mixes round(r·n/(1−r)) images drawn without replacement from `pool` into the n `nominal` images.

  nominal [n, ...], pool [m, ...] (same image shape), pool_masks [m, H, W] or None; seed: the run seed (an
  int; the draw comes from the data layer's reserved stream `streams.rng(seed, 'pollution')`) or a
  np.random.Generator used as is. `what` names the pool in the error raised when it is too small."""
  nominal, pool = np.asarray(nominal), np.asarray(pool)
  n, m = len(nominal), len(pool)
  k = num_anomalies(n, ratio)
  if k > m:
    raise ValueError(f'{FIELD}={ratio} needs {k} {what} for {n} nominal training images but only {m} are '
                     f'available (at most {FIELD}={m / (n + m) if n + m else 0:.4f})')
  _shape_check(nominal, pool, what)
  if pool_masks is not None:
    pool_masks = np.asarray(pool_masks)
    if pool_masks.shape[:1] != (m,) or pool_masks.shape[1:3] != nominal.shape[1:3]:
      raise ValueError(f'{FIELD}: {len(pool_masks)} masks of shape {tuple(pool_masks.shape[1:])} do not fit '
                       f'{m} {what} of shape {tuple(nominal.shape[1:3])}')
  if k == 0:
    masks = None if pool_masks is None else np.zeros((n,) + nominal.shape[1:3], pool_masks.dtype)
    return Polluted(nominal, masks, np.zeros(n, bool), np.arange(n), np.zeros(0, np.int64))
  rng = seed if isinstance(seed, np.random.Generator) else streams.rng(int(seed), 'pollution')
  chosen = rng.choice(m, size=k, replace=False)
  order = rng.permutation(n + k)
  origin = np.concatenate([np.arange(n), -1 - chosen])[order]
  images = np.concatenate([nominal, pool[chosen]])[order]
  masks = None
  if pool_masks is not None:
    masks = np.concatenate([np.zeros((n,) + pool_masks.shape[1:], pool_masks.dtype), pool_masks[chosen]])[order]
  return Polluted(images, masks, origin < 0, origin, chosen)


@dataclasses.dataclass(frozen=True)
class FromTest:
  """`pollute_from_test`: the polluted training set and the test rows that remain (indices, ascending) or
  were moved into training (in the order drawn). Index every parallel test array with `kept_test`."""
  polluted: Polluted
  kept_test: np.ndarray
  removed_test: np.ndarray


def pollute_from_test(nominal, test_images, test_labels, ratio, *, seed, test_masks=None):
  """MVTec layout: the anomalies come from the anomalous test images (label 1), which leave the test set,
  so no test image is ever trained on. At least one anomalous test image must remain."""
  labels = np.asarray(test_labels)
  anom = np.flatnonzero(labels == 1)
  n = len(nominal)
  k = num_anomalies(n, ratio)
  if k and k >= len(anom):
    raise ValueError(f'{FIELD}={ratio} needs {k} anomalous test images for {n} nominal training images but only '
                     f'{len(anom)} exist and at least one must stay in the test set (at most {FIELD}='
                     f'{(len(anom) - 1) / (n + len(anom) - 1) if n + len(anom) > 1 else 0:.4f})')
  images = np.asarray(test_images)
  masks = None if test_masks is None else np.asarray(test_masks)[anom]
  p = pollute(nominal, images[anom], ratio, seed=seed, pool_masks=masks, what='anomalous test images')
  removed = anom[p.pool_indices]
  keep = np.ones(len(labels), bool)
  keep[removed] = False
  return FromTest(p, np.flatnonzero(keep), removed)
