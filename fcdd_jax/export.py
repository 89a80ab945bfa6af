"""`python -m fcdd_jax.export`: export a trained run for serving: a TensorFlow SavedModel (TF Serving) and
serialized StableHLO.

  python -m fcdd_jax.export --workdir RUN --output DIR [--format savedmodel|stablehlo|both]
      [--input_channels C] [--input_size HxW] [--platforms cpu[,cuda,tpu]] [--version 1] [--overwrite]

Writes DIR/<version>/ (SavedModel), DIR/model.stablehlo and DIR/metadata.json. Exit codes: 0 done, 2 bad
flags or run, 4 --output unusable or a write failed. What the exported function computes:
`fcdd_jax.serving.exporter`.

The command line only (absl flags, like every fcdd_jax command); the work is `serving.exporter.run`.
"""
import sys

from absl import flags

from fcdd_jax.app import cli
from fcdd_jax.serving import exporter


def define_flags():
  """This command's flags, a fresh set per call."""
  fv = cli.serving_flags('export')
  flags.DEFINE_enum('format', 'both', ['savedmodel', 'stablehlo', 'both'], 'What to write: a SavedModel, '
                    'serialized StableHLO, or both.', flag_values=fv)
  flags.DEFINE_integer('input_channels', None, "Channels of the served images (default: the run's).",
                       flag_values=fv)
  flags.DEFINE_string('input_size', None, 'HxW to fix the image size, e.g. 224x224 (default: any size).',
                      flag_values=fv)
  flags.DEFINE_string('platforms', 'cpu', 'Comma-separated lowering platforms: cpu, cuda, rocm, tpu.',
                      flag_values=fv)
  flags.DEFINE_integer('version', 1, 'SavedModel version directory DIR/<version> (TF Serving layout).',
                       flag_values=fv)
  return fv


def _run(fv):
  return exporter.run(fv.workdir, fv.output, fmt=fv.format, input_channels=fv.input_channels,
                      input_size=fv.input_size, platforms=fv.platforms, version=fv.version, overwrite=fv.overwrite)


def main(argv=None):
  """Parses `argv` (default: sys.argv[1:]) and runs the command; returns the exit code."""
  return cli.tool_main(exporter.PROG, __doc__, define_flags(), argv, _run)


if __name__ == '__main__':
  sys.exit(main())
