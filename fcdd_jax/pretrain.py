"""`python -m fcdd_jax.pretrain --out vgg11_bn_cifar10.npz [--data DIR]`: starting weights without ImageNet.

Trains the VGG11-BN layers of the FCDD VGG nets as a CIFAR-10 classifier (~24 minutes for 10 epochs on 2 CPU
cores) and writes them in torchvision's layout for `--config.model.pretrained_path` with FCDD_CNN224_VGG_F:

  python -m fcdd_jax.main --config configs/custom.py --config.data.root=/data/my_parts \\
      --config.model.pretrained_path=vgg11_bn_cifar10.npz --config.eval.image_score=mean

--data: CIFAR-10 as folders train/<class>/*, test/<class>/* (the classes airplane ... truck); without it tfds
`cifar10` (downloaded on first use). The command line; the work is in `fcdd_jax.pipeline.pretrain`.
"""
import sys

from absl import flags

from fcdd_jax.app import cli
from fcdd_jax.app import process


def main(argv=None):
  fv = flags.FlagValues()
  flags.DEFINE_string('out', None, 'The .npz to write (written whole or not at all).', flag_values=fv)
  flags.DEFINE_string('data', '', 'CIFAR-10 folders (train/<class>/*, test/<class>/*); empty: tfds cifar10.',
                      flag_values=fv)
  flags.DEFINE_integer('epochs', 10, 'Passes over the 50,000 training images.', lower_bound=1, flag_values=fv)
  flags.DEFINE_integer('batch', 128, 'Batch size.', lower_bound=2, flag_values=fv)
  flags.DEFINE_float('lr', 0.05, 'Peak learning rate (linear warm-up, cosine decay).', lower_bound=0.0,
                     flag_values=fv)
  flags.DEFINE_integer('seed', 0, 'Initialisation and augmentation seed.', lower_bound=0, flag_values=fv)
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --out file.', flag_values=fv)
  flags.mark_flag_as_required('out', flag_values=fv)
  rest, code = cli.parse_tool_flags('fcdd_jax.pretrain', __doc__, fv, argv)
  if code is not None:
    return code
  if rest:
    return cli.tool_error('fcdd_jax.pretrain', f'unexpected arguments: {" ".join(rest)} (see --help)')
  from fcdd_jax.pipeline import pretrain  # pylint: disable=g-import-not-at-top  (jax after the flags)
  from fcdd_jax.pipeline import run as run_lib  # pylint: disable=g-import-not-at-top
  from fcdd_jax.configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.model.name, c.model.dtype = 'FCDD_CNN224_VGG_F', 'auto'
  settings = pretrain.Settings(epochs=fv.epochs, batch=fv.batch, lr=fv.lr, seed=fv.seed,
                               dtype=run_lib.compute_dtype(c))
  try:
    pretrain.run(fv.out, fv.data, settings, overwrite=fv.overwrite)
  except KeyboardInterrupt:
    return cli.tool_error('fcdd_jax.pretrain', f'interrupted; {fv.out} was not written', 130)
  except Exception as e:  # pylint: disable=broad-except  (one line and its exit code; nothing written)
    msg, code = process.describe(e)
    return cli.tool_error('fcdd_jax.pretrain', msg, code)
  print(f'wrote {fv.out}: use it with --config.model.name=FCDD_CNN224_VGG_F '
        f'--config.model.pretrained_path={fv.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
