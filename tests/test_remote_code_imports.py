"""transformers (4.x and 5.0) copies into its module cache only the files that a checkpoint's `auto_map` entry file
imports directly, found with the pattern below; a module imported only by another module is then missing
(`FileNotFoundError` in 5.0, `ModuleNotFoundError` in 4.x). So every entry file must import, directly, every module
of the package it needs. tests/test_compat_matrix.py loads a checkpoint in those versions."""

import re
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "megrezo"
ENTRY_FILES = ["configuration_megrezo", "modeling_megrezo", "processing_megrezo", "image_processing_megrezo"]
"""The files the release's auto_map names (config.json and preprocessor_config.json)."""
RELATIVE_IMPORT = re.compile(r"^\s*(?:import\s+\.(\S+)\s*$|from\s+\.(\S+)\s+import)", re.MULTILINE)
"""What transformers' `get_relative_imports` matches: `from . import x` is not seen, `from .x import y` is."""


def direct_imports(module: str) -> set[str]:
    text = (PACKAGE / f"{module}.py").read_text()
    return {a or b for a, b in RELATIVE_IMPORT.findall(text)}


def all_imports(module: str) -> set[str]:
    found, todo = set(), [module]
    while todo:
        for name in direct_imports(todo.pop()) - found:
            found.add(name)
            todo.append(name)
    return found


def test_entry_files_import_every_module_they_need_directly():
    missing = {entry: sorted(all_imports(entry) - direct_imports(entry)) for entry in ENTRY_FILES}
    assert {entry: names for entry, names in missing.items() if names} == {}


def test_remote_code_uses_no_import_form_that_transformers_cannot_see():
    """`from . import x` would run but never be copied into the module cache."""
    modules = ENTRY_FILES + sorted(set().union(*(all_imports(entry) for entry in ENTRY_FILES)))
    hidden = [name for name in modules if re.search(r"^\s*from\s+\.\s+import", (PACKAGE / f"{name}.py").read_text(),
                                                    re.MULTILINE)]
    assert hidden == []
