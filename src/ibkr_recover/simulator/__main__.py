"""``python -m ibkr_recover.simulator``: serve the simulated gateway (see ``--help``)."""

from __future__ import annotations

import sys

from ._command import main

sys.exit(main())
