"""`python -m fcdd_jax.pretrained`: Import torchvision's ImageNet `vgg11_bn` weights into the VGG-based nets (spec §1.3, §1.4, §11.17).

The command line; the work is in `fcdd_jax.models.pretrained`."""
import sys

from fcdd_jax.models.pretrained import main

if __name__ == '__main__':
  sys.exit(main())
