"""``python -m ibkr_recover.simulator.generate``: write a gateway database, scenario, expectations.

The function is :func:`ibkr_recover.simulator.generate`. Importing this module makes the
package attribute of the same name this module (Python's import system does that), so the
module is made callable as the function: ``ibkr_recover.simulator.generate(...)`` generates
whichever of the two it is.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from ._generate import Expected, generate, main

__all__ = ["generate", "main"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Expected:
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
