"""Launch scripts (run as files: `python launch/local.py ...`); a package so tests can import them."""
