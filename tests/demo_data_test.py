"""The embedded demo dataset is deterministic and its masks mark exactly the changed pixels' defects."""
import numpy as np

from fcdd_jax.data import demo_data


def test_deterministic_and_well_formed():
  a = demo_data.make_demo(seed=3, num_train=8, num_test=12, size=32)
  b = demo_data.make_demo(seed=3, num_train=8, num_test=12, size=32)
  c = demo_data.make_demo(seed=4, num_train=8, num_test=12, size=32)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a['train_images'], c['train_images'])
  train, test, labels, masks = a['train_images'], a['test_images'], a['test_labels'], a['test_masks']
  assert train.shape == (8, 32, 32, 3) and train.dtype == np.uint8
  assert test.shape == (12, 32, 32, 3) and masks.shape == (12, 32, 32)
  assert set(np.unique(labels)) == {0, 1}
  # Nominal test images have empty masks, anomalous ones a non-empty mask.
  assert all(masks[i].sum() == 0 for i in np.where(labels == 0)[0])
  assert all(masks[i].sum() > 0 for i in np.where(labels == 1)[0])
