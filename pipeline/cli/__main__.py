"""``python -m pipeline.cli``: the ``cem`` command (the embedded runtime starts workers this way)."""

import sys

from pipeline.cli import main

sys.exit(main())
