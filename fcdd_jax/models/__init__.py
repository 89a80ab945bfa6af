"""The method's nets: FCDD nets and the registry (nets), HSC/AE baselines, layers with PyTorch semantics, VGG
feature stacks, receptive fields and Gaussian upsampling (receptive), objectives and scores (losses),
pretrained VGG11-BN import (pretrained); CPU kernels under `cpu/` (fused blocks, GEMM and oneDNN convolutions)."""
