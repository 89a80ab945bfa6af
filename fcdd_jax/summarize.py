"""`python -m fcdd_jax.summarize`: Aggregate a sweep directory DIR/normal_<c>/seed_<s>/results.json into one table (paper style).

The command line; the work is in `fcdd_jax.evaluation.summary`."""
import sys

from fcdd_jax.evaluation.summary import main

if __name__ == '__main__':
  sys.exit(main())
