"""evaluation/native_figures: whole images of any size keep their aspect ratio in the paper-style figures."""
import numpy as np

from fcdd_jax.evaluation import native_figures


def test_wide_images_stack_vertically_at_true_aspect_ratio():
  ims = [np.full((20, 200, 3), 100, np.uint8), np.full((20, 120, 1), 50, np.uint8)]
  heats = [np.linspace(0, 1, 20 * 200).reshape(20, 200), np.zeros((20, 120))]
  gts = [np.zeros((20, 200), np.uint8), np.ones((20, 120), np.uint8)]
  fig = native_figures.layout(ims, heats, gts, max_width=1000)
  assert fig.shape == (2 * (3 * 20 + 2 * 2) + 6, 200, 3)      # two blocks of 3 panels, 1 separator
  np.testing.assert_array_equal(fig[0, 0], [100, 100, 100])
  block2 = fig[3 * 20 + 4 + 6:]
  np.testing.assert_array_equal(block2[0, :120], np.full((120, 3), 50))   # the narrower strip is padded, not
  np.testing.assert_array_equal(block2[0, 120:], np.zeros((80, 3)))       # stretched
  small = native_figures.layout(ims, heats, gts, max_width=100)            # shrunk by one integer factor
  assert small.shape[1] == 100 and small.shape[0] == -(-fig.shape[0] // 2)


def test_square_images_side_by_side():
  ims = [np.zeros((30, 30, 3), np.uint8), np.zeros((20, 25, 3), np.uint8)]
  fig = native_figures.layout(ims, [np.zeros((30, 30)), np.zeros((20, 25))])
  assert fig.shape == (30 + 2 + 30, 30 + 6 + 25, 3)

