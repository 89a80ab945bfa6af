"""Offline supervision (spec §6.3): a fixed set of generated anomalies built once at start-up."""
import numpy as np

from fcdd_jax.data import anomalies
from fcdd_jax.data import streams


def offline_supervise(config, nominal, oe_images=None, size_scale=1.0):
  """One anomaly per nominal image (anomaly i is generated from nominal i for malformed_normal(_gt) with the
  offline inversion rule; a fresh noise or OE image for noise), appended to the nominal set (balanced 50/50,
  fixed for all epochs). Every random choice comes from (seed, i), so all processes build the same set.
  Returns (images, labels, maps or None); maps only for malformed_normal_gt (changed pixels; the reference
  attaches them un-augmented, misaligned with random crops and flips — here they go through the same joint
  transform, spec §10.5)."""
  d = config.data
  n = len(nominal)
  anoms, maps = [], []
  for i in range(n):
    rng = streams.rng(config.seed, 'offline', i)
    oe = None if oe_images is None else oe_images[int(rng.integers(len(oe_images)))]
    img, gt = anomalies.make_anomaly(d.supervise_mode, d.noise_mode, rng, nominal[i], oe_image=oe, offline=True,
                                     size_scale=size_scale, gt_min_change=d.get('gt_min_change', 0))
    anoms.append(img)
    maps.append(gt)
  images = np.concatenate([np.asarray(nominal), np.stack(anoms).astype(np.uint8)])
  labels = np.concatenate([np.zeros(n, np.int32), np.ones(n, np.int32)])
  gtmaps = None
  if d.supervise_mode == 'malformed_normal_gt':
    gtmaps = np.concatenate([np.zeros((n,) + images.shape[1:3], np.float32), np.stack(maps)])
  return images, labels, gtmaps
