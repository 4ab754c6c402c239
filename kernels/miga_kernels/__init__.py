"""Triton kernels of the fused ops, one file per op; installed as `miga_fast.kernels` (see pyproject.toml)."""
