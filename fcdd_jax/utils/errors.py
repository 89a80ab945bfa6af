"""The error of a configuration that cannot work, shared by every check (`config_checks` and the data layer's
data-dependent checks), a ValueError carrying its exit code (2; `process.describe`); and the exit codes of
every fcdd_jax command (README, "Exit codes"), defined once here for `app/process` and `serving/messages`."""

EXIT_OK, EXIT_UNEXPECTED, EXIT_CONFIG, EXIT_NON_FINITE, EXIT_FILE_SYSTEM, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


class ConfigError(ValueError):
  """A configuration value that cannot work; the message (one line) names the field, its value and what is
  allowed."""
  exit_code = 2
