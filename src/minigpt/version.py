"""The package's version, in a module of its own so every room can name it without importing
the package facade (`minigpt/__init__.py`) that sits above them."""

__version__ = "0.1.0"  # keep equal to pyproject.toml's version (tests/test_layout.py checks)
