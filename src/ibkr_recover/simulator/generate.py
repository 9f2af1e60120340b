"""``python -m ibkr_recover.simulator.generate``: write a gateway database, scenario, expectations.

A command module only; the function is :func:`ibkr_recover.simulator.generate`.
"""

from __future__ import annotations

import sys

from ._generate import main

if __name__ == "__main__":
    sys.exit(main())
