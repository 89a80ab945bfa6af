"""Builds the optional oneDNN convolution extension (fcdd_jax/models/cpu/onednn/_onednn_conv*.so, XLA FFI custom calls:
the convolutions, onednn_conv.cc, and the fused blocks' BN-activation-pool tail, block_tail.cc; threaded with OpenMP,
the libgomp oneDNN's gomp build uses; fcdd_jax/models/cpu/onednn/__init__.py). Everything else is declared in
pyproject.toml.

On Linux x86_64 the build requirements (pyproject.toml) bring oneDNN's headers and library
(onednn-devel-cpu-gomp) and the XLA FFI headers (jaxlib). When they are missing or the compiler fails, the
install goes on without the extension and fcdd_jax runs its XLA convolutions (the run says which it uses).
"""
import importlib.metadata
import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ONEDNN_DIR = os.path.join('fcdd_jax', 'models', 'cpu', 'onednn')


def _onednn_paths():
  """(include dir of dnnl.hpp, path of libdnnl.so.3) from the installed oneDNN wheels, or (None, None)."""
  inc = lib = None
  for dist in ('onednn-devel-cpu-gomp', 'onednn-cpu-gomp'):
    try:
      files = importlib.metadata.files(dist) or ()
    except importlib.metadata.PackageNotFoundError:
      continue
    for f in files:
      if f.name == 'dnnl.hpp' and inc is None:
        inc = os.path.dirname(str(f.locate()))
      elif f.name == 'libdnnl.so.3' and lib is None:
        lib = str(f.locate())
  return inc, lib


def _ffi_include():
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  inc = os.path.join(os.path.dirname(jaxlib.__file__), 'include')
  return inc if os.path.exists(os.path.join(inc, 'xla', 'ffi', 'api', 'ffi.h')) else None


class OptionalBuildExt(build_ext):
  """build_ext whose failure (no compiler, no oneDNN or FFI headers) only warns: the package works without it."""

  def run(self):
    try:
      super().run()
    except Exception as e:  # pylint: disable=broad-except
      self._warn(e)

  def build_extension(self, ext):
    try:
      inc, lib = _onednn_paths()
      ffi_inc = _ffi_include()
      if not (inc and lib and ffi_inc):
        raise RuntimeError(f'oneDNN headers {inc}, libdnnl.so.3 {lib}, XLA FFI headers {ffi_inc}')
      ext.include_dirs += [inc, ffi_inc]
      ext.extra_objects += [lib]
      super().build_extension(ext)
    except Exception as e:  # pylint: disable=broad-except
      self._warn(e)

  @staticmethod
  def _warn(e):
    print(f'WARNING: fcdd_jax: the oneDNN convolution extension was not built ({type(e).__name__}: {e}); '
          'fcdd_jax will use XLA convolutions.', file=sys.stderr)


ext_modules = []
if sys.platform.startswith('linux') and platform.machine().lower() in ('x86_64', 'amd64'):
  ext_modules.append(Extension(
      'fcdd_jax.models.cpu.onednn._onednn_conv',
      sources=[os.path.join(ONEDNN_DIR, 'onednn_conv.cc'), os.path.join(ONEDNN_DIR, 'block_tail.cc')],
      depends=[os.path.join(ONEDNN_DIR, 'runtime.h'), os.path.join(ONEDNN_DIR, 'block_tail_rows.inc')],
      language='c++',
      # block_tail.cc compiles its loops for AVX-512 too (#pragma GCC target) and picks them at run time
      extra_compile_args=['-O2', '-g0', '-std=c++17', '-fvisibility=hidden', '-Wno-return-type', '-fopenmp'],
      # installed wheel: <prefix>/lib/pythonX.Y/site-packages/fcdd_jax/models/cpu/onednn -> <prefix>/lib (libdnnl.so.3);
      # fcdd_jax.models.cpu.onednn also preloads the library by path, which covers editable installs
      extra_link_args=['-Wl,-rpath,$ORIGIN/../../../../../..', '-fopenmp'],
  ))

setup(ext_modules=ext_modules, cmdclass={'build_ext': OptionalBuildExt})
