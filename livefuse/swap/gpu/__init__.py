"""The GPU-resident frame path: kernels (kernels.cu), their compilers and launchers."""
