"""The command line's configuration: which file `--config` names, the file loaded and checked field by field
against `configs/default.py`, the config fields listed in `--help`, and the command line's own one-line errors.

`configs/default.py` is the one source of truth of the fields: its `get_config()` gives every field and its
default, the comment next to each field (and the comment lines under it) its meaning, and its
`c.<group> = ... = ConfigDict()   # ...` lines the groups (`field_docs`).
"""
import difflib
import importlib.util
import os
import re
import sys

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')   # the shipped configs
DEMO_CONFIG = os.path.join(CONFIG_DIR, 'demo.py')
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, 'default.py')


class CommandLineError(ValueError):
  """A command line that cannot work (exit code 2); the message is one line."""
  exit_code = 2


def shipped_configs():
  """Names of the configs shipped in the package (fcdd_jax/configs/<name>.py)."""
  return sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith('.py') and f[0] != '_')


def resolve_config_path(value):
  """--config value -> config file: an existing path as given; else a shipped config named `<name>`,
  `configs/<name>.py` or `fcdd_jax/configs/<name>.py` (a wheel installed outside a checkout). Anything
  else is returned unchanged (the error then names it). An optional `:arg` suffix is kept."""
  path, sep, arg = value.partition(':')
  if os.path.exists(path):
    return value
  m = re.fullmatch(r'(?:(?:fcdd_jax/)?configs/)?(\w+)(?:\.py)?', path)
  if m and os.path.exists(os.path.join(CONFIG_DIR, m.group(1) + '.py')):
    return os.path.join(CONFIG_DIR, m.group(1) + '.py') + sep + arg
  return value


def with_default_config(argv):
  """(argv, defaulted): --config by name resolved to its file; `--config.x=...` without `--config`: the
  overrides apply to the demo config (as a bare run does), and `defaulted` says so."""
  argv = list(argv)
  for i, a in enumerate(argv[1:], 1):
    m = re.match(r'^(--?config=)(.*)$', a)
    if m:
      argv[i] = m.group(1) + resolve_config_path(m.group(2))
    elif re.match(r'^--?config$', a) and i + 1 < len(argv):
      argv[i + 1] = resolve_config_path(argv[i + 1])
  has_override = any(re.match(r'^--?(no)?config\.', a) for a in argv[1:])
  has_config = any(re.match(r'^--?config(=|$)', a) for a in argv[1:])
  if has_override and not has_config:
    return argv[:1] + [f'--config={DEMO_CONFIG}'] + argv[1:], True
  return argv, False


class Args(list):
  """The arguments left after flag parsing, and whether --config was defaulted to the demo config."""

  def __init__(self, argv, defaulted):
    super().__init__(argv)
    self.defaulted = defaulted


def config_value(argv):
  """The --config value of argv (after `with_default_config`), or None."""
  for i, a in enumerate(argv[1:], 1):
    m = re.match(r'^--?config=(.*)$', a)
    if m:
      return m.group(1)
    if re.match(r'^--?config$', a) and i + 1 < len(argv):
      return argv[i + 1]
  return None


# ----------------------------------------------------------------------------------------------------
# Config files

def load_config_file(value):
  """The ConfigDict of a config file `path[:arg]`, checked: the file exists, defines get_config, which
  returns a ConfigDict without fields unknown to configs/default.py. CommandLineError (one line) otherwise."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  path, _, arg = value.partition(':')
  if not os.path.exists(path):
    raise CommandLineError(f'config file {value!r} does not exist; the shipped configs are configs/<name>.py (or '
                           'just <name>) with name in: ' + ', '.join(shipped_configs()))
  try:
    spec = importlib.util.spec_from_file_location('fcdd_user_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  (the user's file: any error)
    raise CommandLineError(f'cannot load config file {path!r}: {type(e).__name__}: {_first_line(e)}') from e
  if not callable(getattr(module, 'get_config', None)):
    raise CommandLineError(f'config file {path!r} defines no get_config(); a config file defines '
                           '`def get_config(): ...` returning a ConfigDict (see configs/demo.py)')
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise CommandLineError(f'config file {path!r}: get_config() raised {type(e).__name__}: {_first_line(e)}') from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise CommandLineError(f'config file {path!r}: get_config() returned a {type(config).__name__}, not an '
                           'ml_collections.ConfigDict')
  check_fields(config, path)
  return config


def check_fields(config, path):
  """Every field of `config` is declared in configs/default.py (a typo in a file is refused like one on the
  command line): CommandLineError naming the file, the field and the closest declared name."""
  known = default_fields()
  for field in _flatten(config.to_dict()):
    if field not in known and not any(k.startswith(field + '.') for k in known):
      close = difflib.get_close_matches(field, list(known), n=1)
      hint = f" (did you mean 'config.{close[0]}'?)" if close else ''
      raise CommandLineError(f"config file {path!r} sets unknown config field 'config.{field}'{hint}: not "
                             'declared in configs/default.py')


def default_fields():
  """{field path: default value} of configs/default.py."""
  spec = importlib.util.spec_from_file_location('fcdd_default_config', DEFAULT_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return _flatten(module.get_config().to_dict())


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and v:
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def unknown_field_message(e, argv):
  """ml_collections' KeyError text is repr-quoted with an embedded newline and a suggestion; say it plainly:
  unknown config field 'config.batch_sise' (did you mean 'config.batch_size'?)."""
  while e.args and isinstance(e.args[0], BaseException):   # AttributeError(KeyError('...'))
    e = e.args[0]
  text = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
  key = re.match(r"""\s*['"]?([^'"\n]*)""", text).group(1)
  suggestion = re.search(r'Did you mean "([^"]+)"', text)
  names = [a.split('=', 1)[0].lstrip('-') for a in argv[1:] if re.match(r'^--?config\.', a)]
  hits = [n for n in names if key and key in n.split('.')] or [n for n in names if key and key in n]
  field = hits[0] if hits else (f'config.{key}' if key else 'config.?')
  hint = ''
  if suggestion:
    parts = field.split('.')
    if key in parts:
      parts[parts.index(key)] = suggestion.group(1)
    hint = f" (did you mean '{'.'.join(parts)}'?)"
  return (f"unknown config field '{field}'{hint}: not declared in configs/default.py (fields are e.g. "
          'config.optim.lr, config.data.normal_class; all of them: --help)')


def _first_line(e):
  return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


# ----------------------------------------------------------------------------------------------------
# --help: the config fields from configs/default.py

def field_docs():
  """[(group, group meaning, [(field, default, meaning)])] from configs/default.py, in its order."""
  defaults = default_fields()
  groups = [['', 'top level', []]]
  var_group = {'c': ''}
  last = None
  with open(DEFAULT_CONFIG, encoding='utf-8') as f:
    for line in f:
      g = re.match(r'\s*c\.(\w+)\s*=\s*(\w+)\s*=\s*ml_collections\.ConfigDict\(\)\s*(?:#\s*(.*))?$', line)
      if g:
        var_group[g.group(2)] = g.group(1) + '.'
        groups.append([g.group(1), g.group(3) or '', []])
        last = None
        continue
      m = re.match(r'\s*(\w+)\.(\w+)\s*=\s*[^#]*?(?:#\s*(.*))?$', line)
      if m and m.group(1) in var_group:
        field = var_group[m.group(1)] + m.group(2)
        if field in defaults:
          last = [field, defaults[field], m.group(3) or '']
          next(gr for gr in groups if gr[0] == field.rpartition('.')[0])[2].append(last)
        continue
      c = re.match(r'\s*#\s*(.*)$', line)
      if c and last is not None:
        last[2] = f'{last[2]} {c.group(1)}'.strip()
      else:
        last = None
  return [(g, doc, fields) for g, doc, fields in groups if fields]


def config_help():
  """The config fields as --help text, by group: `--config.<field>` (default) meaning."""
  lines = ['Config fields (override any with --config.<field>=value; declared in fcdd_jax/configs/default.py; '
           'a --config file overrides the defaults):']
  for group, doc, fields in field_docs():
    lines.append(f'\n  [{group or "top level"}]' + (f' {doc}' if doc and group else ''))
    for field, default, meaning in fields:
      lines.append(f'    --config.{field} (default: {default!r})' + (f'\n        {meaning}' if meaning else ''))
  return '\n'.join(lines)


def print_help(flag_values, full=False):
  """--help / --helpfull: the command's flags, then every config field; exit code 0."""
  module = sys.modules['__main__'].__doc__ or ''
  print(module.strip() + '\n')
  print('Flags:')
  print(flag_values.get_help() if full else flag_values.module_help(_main_module(flag_values)))
  print()
  print(config_help())


def _main_module(flag_values):
  for name in ('fcdd_jax.main', '__main__'):
    if flag_values.get_flags_for_module(name):
      return name
  return sys.argv[0]


# ----------------------------------------------------------------------------------------------------
# The tools' command lines (predict, export, pretrained, summarize): absl flags like `main`, in their own FlagValues

def tool_error(prog, msg, code=2):
  """Prints `prog: error: msg` (one line) on stderr and returns `code`."""
  print(f'{prog}: error: {msg}', file=sys.stderr, flush=True)
  return code


def parse_tool_flags(prog, usage, flag_values, argv=None):
  """(positional arguments, None) after parsing `argv` (default: sys.argv[1:]) into `flag_values`, or
  (None, exit code): 0 after --help (the usage and every flag with its help text), 2 after a one-line error."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  argv = sys.argv[1:] if argv is None else list(argv)
  if any(a in ('--help', '-help', '--helpshort', '--helpfull', '-h', '-?') for a in argv):
    print(usage.strip() + '\n\nFlags:\n' + (flag_values.get_help(include_special_flags=False) or '  (none)'))
    return None, 0
  try:
    return flag_values([prog, *argv])[1:], None
  except flags.Error as e:
    missing = re.search(r'Flag --(\w+) must have a value other than None', str(e))
    msg = f'--{missing.group(1)} is required' if missing else _first_line(e)
    return None, tool_error(prog, f'{msg} (see --help)')


def serving_flags(what):
  """A fresh FlagValues with the flags predict and export share: --workdir (the trained run), --output (a
  folder for `what`, e.g. 'export') and --overwrite, the first two required. Each call of a command parses its own set, so
  no value of one call leaks into the next."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  flags.DEFINE_string('workdir', None, 'The trained run (its config.json, preprocessing.json, checkpoints/ and '
                      'results.json for the thresholds).', flag_values=fv)
  flags.DEFINE_string('output', None, f'Output folder: absent or empty (or an earlier {what} with --overwrite); '
                      'written whole or not at all.', flag_values=fv)
  flags.DEFINE_bool('overwrite', False, f'Replace an earlier {what} in --output whole.', flag_values=fv)
  for name in ('workdir', 'output'):
    flags.mark_flag_as_required(name, flag_values=fv)
  return fv


def tool_main(prog, usage, flag_values, argv, command):
  """A tool's main(): parses `argv` into `flag_values` (`parse_tool_flags`), refuses positional arguments,
  then returns `command(flag_values)` (the exit code)."""
  rest, code = parse_tool_flags(prog, usage, flag_values, argv)
  if code is not None:
    return code
  if rest:
    return tool_error(prog, f'unexpected arguments: {" ".join(rest)} (flags are --name=value; see --help)')
  return command(flag_values)
