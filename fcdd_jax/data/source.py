"""`Source`: what every dataset module returns — one dataset for one normal class as decoded uint8 arrays at
the dataset's raw size, with the transform that turns them into net inputs (spec §5).

Labels are 0 = nominal, 1 = anomalous (before `nominal_label`, which the pipeline applies, spec §3.6).
"""
import dataclasses
from typing import Any, Optional

import numpy as np

from fcdd_jax.data import transforms


@dataclasses.dataclass
class Source:
  """Arrays, labels, masks and metadata of one dataset/normal class; `input_pipeline.Pipeline` reads it."""
  name: str                       # dataset name (config.data.name)
  class_names: tuple
  normal_class: int
  transform: transforms.Transform
  train_images: Any               # uint8 [N,h,w,C] at raw size (nominal only, unless train_labels is set)
  test_images: Any                # uint8 [M,h,w,C]
  test_labels: Any                # [M] 0 nominal / 1 anomalous
  test_masks: Any = None          # uint8 [M,h,w] at raw size, or None (no pixel ground truth)
  test_masks_original: Optional[list] = None   # masks for the pixel AUC at their own resolution (None: test_masks)
  train_labels: Any = None        # [N] fixed training labels (labelled anomalies, `other`); None: nominal only
  train_gtmaps: bool = False      # the GT-map loss is used (spec §3.2)
  train_images_input: Any = None  # the training images resized straight to the input size ('mvtec' geometry)
  train_original_sizes: Any = None  # [N,2] original (h, w): malformed_normal noise drawn at that resolution
  train_resize: str = ''          # how the stored training images were made ('shorter' | 'nearest' | 'bilinear')
  size_scale: float = 1.0         # anomaly sizes relative to the reference's resolution
  oe_images: Any = None           # indexable of uint8 OE / true-anomaly images at raw size, or None
  oe_masks: Any = None            # masks of true anomalies (noise_mode=mvtec_gt), or None
  train_is_anomaly: Any = None    # bool [N]: true anomalies mixed in unlabelled (data.pollution), or None (clean)
  pollution: Optional[dict] = None  # the pollution record for results.json (data/pollution.py), or None

  @property
  def image_shape(self):
    """(H, W, C) at the net input."""
    return tuple(self.transform.input_size) + (int(self.transform.channels),)

  @property
  def test_gtmaps(self):
    return self.test_masks is not None


def restrict(src, indices):
  """`src` with only the training rows `indices` (into src.train_images; every per-row training array
  follows); the test split is unchanged."""
  idx = np.asarray(indices, np.int64)
  n = len(src.train_images)
  if idx.ndim != 1 or (len(idx) and (idx.min() < 0 or idx.max() >= n)):
    raise ValueError(f'training indices must be a 1-D array in 0..{n - 1}; got shape {idx.shape}')
  take = lambda a: None if a is None else np.asarray(a)[idx]
  return dataclasses.replace(
      src, train_images=np.asarray(src.train_images)[idx], train_images_input=take(src.train_images_input),
      train_original_sizes=take(src.train_original_sizes), train_labels=take(src.train_labels),
      train_is_anomaly=take(src.train_is_anomaly))
