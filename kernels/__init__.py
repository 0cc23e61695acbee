"""Triton kernels of the sampling engine, each beside its launcher and its eager reference.

Installed as `timemar_engine.kernels`. Importing a kernel module needs `triton`; set
TRITON_INTERPRET=1 before the import to run the kernels on CPU tensors (tests)."""
