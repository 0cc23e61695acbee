"""Setuptools entry point; metadata lives in pyproject.toml. Later: the C++/CUDA extension in csrc/."""
from setuptools import setup

setup()
