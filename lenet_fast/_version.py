"""The package version: one place, read by ``lenet_fast.__version__``, `show_config`, the command
line and the build (``[tool.setuptools.dynamic]`` in pyproject.toml)."""

__version__ = "0.1.0"
