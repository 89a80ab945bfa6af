"""The shipped configs, one module per experiment (`default` declares every field).

Addressed as `--config configs/<name>.py` from a checkout (`configs` links here) or as `--config <name>` from
any directory, also with an installed wheel (`cli.resolve_config_path`); importable as
`fcdd_jax.configs.<name>`.
"""
