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
from fcdd_jax.app import process
from fcdd_jax.serving import exporter

PROG = exporter.PROG


def define_flags():
  """A fresh set of this command's flags (each call of `main` parses its own: no value leaks between calls)."""
  fv = flags.FlagValues()
  flags.DEFINE_string('workdir', None, 'The trained run (its config.json, preprocessing.json, checkpoints/ and '
                      'results.json for the thresholds).', flag_values=fv)
  flags.DEFINE_string('output', None, 'Output folder: absent or empty (or an earlier export with --overwrite); '
                      'written whole or not at all.', flag_values=fv)
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
  flags.DEFINE_bool('overwrite', False, 'Replace an earlier export in --output whole.', flag_values=fv)
  for name in ('workdir', 'output'):
    flags.mark_flag_as_required(name, flag_values=fv)
  return fv


def main(argv=None):
  """Parses `argv` (default: sys.argv[1:]) and runs the command; returns the exit code."""
  fv = define_flags()
  rest, code = cli.parse_tool_flags(PROG, __doc__, fv, argv)
  if code is not None:
    return code
  if rest:
    return cli.tool_error(PROG, f'unexpected arguments: {" ".join(rest)} (flags are --name=value; see --help)')
  process.quiet_tensorflow()   # before TensorFlow loads (the SavedModel writer): no C++ start-up banners
  return exporter.run(fv.workdir, fv.output, fmt=fv.format, input_channels=fv.input_channels,
                      input_size=fv.input_size, platforms=fv.platforms, version=fv.version, overwrite=fv.overwrite)


if __name__ == '__main__':
  sys.exit(main())
