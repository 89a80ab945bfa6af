"""CPU kernels for the nets: fused conv-BN-activation-pool blocks with a hand-written VJP (fused_block), the
bf16 GEMM convolutions and per-layer conv plan (cpu_conv), oneDNN convolutions as XLA FFI calls (onednn/)."""
