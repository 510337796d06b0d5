"""Imports every command module so that each registers itself on the app."""

import importlib

_MODULES = ["phantoms", "prepare", "train", "reconstruct", "fit", "generate", "evaluate", "render", "demo", "export"]

for _name in _MODULES:
    try:
        importlib.import_module(f"cellgen.cli.{_name}")
    except ModuleNotFoundError as _err:  # stage not built yet
        if _err.name != f"cellgen.cli.{_name}":
            raise
