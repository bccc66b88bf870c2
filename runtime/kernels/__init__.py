"""Forward kernels, one file per operator family, each written once against the NumPy
API (``xp``) so that CuPy arrays go through the same code."""
