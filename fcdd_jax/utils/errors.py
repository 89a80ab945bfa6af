"""The error of a configuration that cannot work, shared by every check (`config_checks` and the data layer's
data-dependent checks). It is a ValueError carrying its exit code (2; `process.describe`)."""


class ConfigError(ValueError):
  """A configuration value that cannot work; the message (one line) names the field, its value and what is
  allowed."""
  exit_code = 2
