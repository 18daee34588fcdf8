"""The coordinator: one per run. It reads the input, skips finished rows, owns the journal, the
manifest, the lock, the fingerprint and resume, and hands rows to an executor.

This subpackage's name is also the Python API's ``runner.run(...)``: once it is imported it takes
that name in the ``runner`` package, so calling it calls ``runner.api.run``.
"""

import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **options: Any) -> Any:
        from runner.api import run

        return run(*args, **options)


sys.modules[__name__].__class__ = _CallableModule
