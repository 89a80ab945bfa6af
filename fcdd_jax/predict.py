"""`python -m fcdd_jax.predict`: score new images with a trained run, at their own resolution: anomaly scores,
heatmap overlays and masks.

  python -m fcdd_jax.predict --workdir RUN --input PATH [--input PATH ...] --output DIR
      [--overwrite] [--threshold T] [--mode full|crop] [--scale F] [--batch_size B] [--max_memory_gb G] [--tile T]

Writes DIR/scores.csv (path,score,anomalous), DIR/<stem>_overlay.png and, with a pixel threshold,
DIR/<stem>_mask.png. Exit codes: 0 done, 1 no image decoded, 2 bad input (flags, run, an image over the
limits), 4 --output unusable or a write failed. How images are scaled and scored: `fcdd_jax.serving.predictor`.

The command line only (absl flags, like every fcdd_jax command); the work is `serving.predict_files.run` (how an image is scored: `serving.predictor`).
"""
import sys

from absl import flags

from fcdd_jax.app import cli
from fcdd_jax.models import tiling
from fcdd_jax.serving import predict_files
from fcdd_jax.serving import predictor


def define_flags():
  """This command's flags, a fresh set per call."""
  fv = cli.serving_flags('predict output')
  flags.DEFINE_multi_string('input', None, 'An image file or a folder of images; repeat the flag for more.',
                            flag_values=fv)
  flags.mark_flag_as_required('input', flag_values=fv)
  flags.DEFINE_float('threshold', None, 'Image score threshold for the `anomalous` column (default: the image '
                     'threshold in RUN/results.json, else none).', flag_values=fv)
  flags.DEFINE_enum('mode', 'full', list(predictor.MODES), 'full: the whole image at its own size; crop: the '
                    'evaluation crop, scored exactly as evaluation scores it.', flag_values=fv)
  flags.DEFINE_float('scale', None, "full mode: resize files by this factor (1 = their own pixels) instead of the "
                     "run's shorter-side rule.", flag_values=fv)
  flags.DEFINE_integer('batch_size', 16, 'Images of the training input size per batch (larger images: fewer).',
                       flag_values=fv)
  flags.DEFINE_float('max_memory_gb', predictor.MAX_MEMORY_GB, 'Memory for the net program of one batch; larger '
                     'images are refused before any scoring, naming the --scale that fits.', flag_values=fv)
  flags.DEFINE_integer('tile', tiling.DEFAULT_TILE, 'Patch-trained runs (data.patch_size): core pixels per tile '
                       'side of the exact tiled whole-image scoring; memory is bounded by the tile.', flag_values=fv)
  return fv


def _run(fv):
  return predict_files.run(fv.workdir, fv.input, fv.output, overwrite=fv.overwrite, threshold=fv.threshold,
                       mode=fv.mode, scale=fv.scale, batch_size=fv.batch_size, max_memory_gb=fv.max_memory_gb,
                       tile=fv.tile)


def main(argv=None):
  """Parses `argv` (default: sys.argv[1:]) and runs the command; returns the exit code."""
  return cli.tool_main(predictor.PROG, __doc__, define_flags(), argv, _run)


if __name__ == '__main__':
  sys.exit(main())
