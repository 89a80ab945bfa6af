"""fcdd_jax: Fully Convolutional Data Description (Liznerski et al., ICLR 2021) in JAX/Flax."""
__version__ = '0.1.0'
