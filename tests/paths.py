"""Paths the tests share (a plain module, not a test file): the repository root and the shared data dir."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the checkout
SHARED = os.path.join(os.path.dirname(ROOT), 'shared')               # read-only data next to it (may be absent)
DATA = os.path.join(SHARED, 'data')                                  # the shared data sets
