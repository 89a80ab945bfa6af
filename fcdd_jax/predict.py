"""`python -m fcdd_jax.predict`: Score new images with a trained run, at their own resolution: anomaly scores, heatmap overlays and masks.

The command line; the work is in `fcdd_jax.serving.predictor`."""
import sys

from fcdd_jax.serving.predictor import main

if __name__ == '__main__':
  sys.exit(main())
