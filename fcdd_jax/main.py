"""fcdd_jax command line: one run = one nominal class and one seed.

  python -m fcdd_jax.main                                  # built-in demo on embedded data
  python -m fcdd_jax.main --config configs/cifar10.py --workdir runs/c10 --config.data.normal_class=3
  python -m fcdd_jax.main --config cifar10 ...             # the same shipped config by name (any directory)
  python -m fcdd_jax.main --help                           # these flags and every config field with its default

--config takes a file (`configs/<name>.py` in a checkout, or any path), or the name of a shipped config
(`fcdd_jax/configs/<name>.py`, also inside an installed wheel). Flags only: the config is resolved and checked
in `cli`, the process set up in `process`, and the run is `train.train_and_evaluate` (many runs:
`multirun.train_and_evaluate_runs`; refinement: `refine_run.train_and_evaluate`).
"""
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from fcdd_jax.app import cli
from fcdd_jax.app import process
from fcdd_jax.utils import memory

FLAGS = flags.FLAGS

config_flags.DEFINE_config_file(
    'config', None, 'Configuration file (configs/<name>.py or any path) or the name of a shipped config '
    '(e.g. cifar10); default: the demo.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Output directory (default: runs/<config>-<timestamp>).')
flags.DEFINE_bool('restart', False, 'Move an existing run in --workdir aside to <workdir>.old-<time> (nothing is '
                  'deleted) and train from scratch: for a changed model/data configuration or damaged checkpoints.')
flags.DEFINE_bool('verbose', False, 'Full tracebacks and library log lines (also: environment FCDD_DEBUG=1).')
flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0 (multi-host; jax.distributed).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host).')
flags.DEFINE_integer('process_id', None, 'This process (0 .. num_processes-1).')
flags.DEFINE_enum('distributed', 'off', ['off', 'auto'],
                  "'auto': let JAX detect TPU VMs / SLURM and initialise jax.distributed.")
flags.DEFINE_integer('initialization_timeout', 120, 'Seconds to wait for all processes to join.')
flags.DEFINE_integer('heartbeat_timeout', 60,
                     'Seconds after which a silent process counts as dead and all others stop with an error.')
flags.DEFINE_integer('shutdown_timeout', 60, 'Seconds a finishing process waits for the others at exit.')
flags.DEFINE_enum('allocator', 'auto', list(memory.ALLOCATORS),
                  "Process allocator. auto: mimalloc when no GPU/TPU is visible (XLA:CPU's step buffers reused, a "
                  "bounded resident set; utils/memory.py), else glibc's; re-executes itself once to preload it.")


def main(argv):
  if len(argv) > 1:
    process.error_exit(f'unexpected arguments: {" ".join(argv[1:])} (flags are --name=value; see --help)')
  verbose = process.verbose(FLAGS.verbose)
  process.setup_logging(verbose)
  if FLAGS.config is not None:
    config, name = FLAGS.config, os.path.splitext(os.path.basename(FLAGS['config'].config_filename))[0]
  else:
    config, name = cli.load_config_file(cli.DEMO_CONFIG), 'demo'
    config.lock()
  workdir = FLAGS.workdir
  if workdir and '://' in workdir:   # os.makedirs('gs://b/r') would make a local folder 'gs:' and lose the run
    process.error_exit(f'--workdir={workdir} is a URL; the workdir is written with local file I/O: give a local '
                       'directory or a mounted bucket (e.g. gcsfuse), shared by all hosts of a multi-host run')
  with process.run_guard(verbose, workdir):
    # (imported here: jax and TF start threads, which must not exist before the allocator re-exec)
    from fcdd_jax.pipeline import config_checks, multirun, refine_run, train  # pylint: disable=g-import-not-at-top
    from fcdd_jax.utils import checkpointing  # pylint: disable=g-import-not-at-top
    process.init_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.distributed,
                             initialization_timeout=FLAGS.initialization_timeout,
                             heartbeat_timeout_seconds=FLAGS.heartbeat_timeout,
                             shutdown_timeout_seconds=FLAGS.shutdown_timeout)
    config_checks.check_config(config)   # every field, before any work starts
    checkpointing.install_sigterm_handler()
    workdir = FLAGS.workdir or train.default_workdir(name)
    if FLAGS.restart:
      process.restart(workdir)
    if config.refine.rounds:   # training-data refinement (issue 16)
      refine_run.train_and_evaluate(config, workdir)
    elif config.runs:          # many runs as one program
      multirun.train_and_evaluate_runs(config, workdir)
    else:
      train.train_and_evaluate(config, workdir)


def parse_flags(argv):
  """absl flag parsing; --help/--helpfull list the flags and every config field (exit 0); a config file is
  checked field by field; every problem is one line (exit 2). A command (not a call from Python) then
  re-executes itself once when --allocator asks for it."""
  argv = _parse(argv)
  if os.path.abspath(sys.argv[0]) == os.path.abspath(__file__):
    process.use_allocator(FLAGS.allocator)   # may replace this process: it then parses its flags again
  if argv.defaulted and FLAGS['config'].config_filename == cli.DEMO_CONFIG:
    print('fcdd_jax: no --config given: the --config.* overrides apply to the demo config (configs/demo.py)',
          flush=True)
  return argv


def _parse(argv):
  argv, defaulted = cli.with_default_config(list(argv))
  sys.argv[:] = argv   # config_flags reads the overrides to define from sys.argv
  if FLAGS.is_parsed():  # parsed before in this process (tests, programmatic use): start from a clean slate
    FLAGS.unparse_flags()
    for name in [n for n in FLAGS if n.startswith('config.')]:
      delattr(FLAGS, name)
  if any(a in ('--help', '-help', '--helpshort', '-h', '--helpfull', '-?') for a in argv[1:]):
    cli.print_help(FLAGS, full='--helpfull' in argv)
    sys.exit(0)
  try:
    if cli.config_value(argv) is not None:
      cli.load_config_file(cli.config_value(argv))   # the file alone first: its own errors and typos
    return cli.Args(FLAGS(argv), defaulted)
  except cli.CommandLineError as e:
    process.error_exit(str(e))
  except (AttributeError, KeyError) as e:
    process.error_exit(cli.unknown_field_message(e, argv))
  except flags.Error as e:
    process.error_exit(process.first_line(e))
  except (OSError, ImportError, SyntaxError, TypeError, ValueError) as e:
    process.error_exit(f'cannot load the config: {process.first_line(e)}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
