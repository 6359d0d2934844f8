"""Megrez-3B-Omni for transformers. Importing any module of the package first drops the import-time lines of
torchao and torch that a user can do nothing about (see import_noise.py)."""

from .import_noise import drop_import_noise

drop_import_noise()
