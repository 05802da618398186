"""Build script. The package metadata lives in pyproject.toml; the compiled extension
dpir_fast._C (csrc/) and the Triton kernels (kernels/) join here when they exist."""
from setuptools import setup

setup()
