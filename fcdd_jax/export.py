"""`python -m fcdd_jax.export`: Export a trained run for serving: a TensorFlow SavedModel (TF Serving) and serialized StableHLO.

The command line; the work is in `fcdd_jax.serving.exporter`."""
import sys

from fcdd_jax.serving.exporter import main

if __name__ == '__main__':
  sys.exit(main())
