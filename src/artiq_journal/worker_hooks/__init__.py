"""Hooks that journal a run from inside the worker, and the resume mixin.

- :func:`attach` (``attach.py``): journal an existing ``DatasetManager``
  (ARTIQ's or the built-in runner's) explicitly; returns a
  :class:`LiveJournal`.
- ``autoload.py``: with ``ARTIQ_JOURNAL=1`` in the master's environment,
  every ARTIQ worker journals its run by itself (loaded at interpreter
  start-up by the ``artiq_journal_autoload.pth`` file).
- :class:`JournalResumable` (``resume.py``): ``self.checkpoint(**state)`` and
  ``self.resume_state(default)`` for experiments.
- ``config.py``: the ``ARTIQ_JOURNAL_*`` settings.

The three exports are loaded on first access.  The ``.pth`` start-up hook
imports ``autoload`` (and so this package) while ``site`` is still building
``sys.path``: at that point numpy or msgpack may not be importable yet, and
every Python process of the ARTIQ installation pays for what is imported.
So importing this package imports nothing else; the exports are properties
of the package's module class, which also keeps ``attach`` the function
when the import system binds the submodule of the same name here.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module

__all__ = ["attach", "LiveJournal", "JournalResumable", "write_results"]

def _export(module: str, name: str) -> property:
    def get(package: types.ModuleType) -> object:
        return getattr(import_module(f"{__name__}.{module}"), name)

    def set_(package: types.ModuleType, value: object) -> None:
        # Called by the import system with the submodule "attach" after it
        # is loaded; the package keeps exporting the function.
        if not isinstance(value, types.ModuleType):
            raise AttributeError(f"cannot replace {__name__}.{name}")

    return property(get, set_, doc=f"``{module}.{name}``, imported on use")


class _Package(types.ModuleType):
    attach = _export("attach", "attach")
    LiveJournal = _export("attach", "LiveJournal")
    JournalResumable = _export("resume", "JournalResumable")
    write_results = _export("storage", "write_results")


sys.modules[__name__].__class__ = _Package
