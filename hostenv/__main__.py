"""`python -m hostenv`: the host-settings command line (hostenv.cli)."""

import sys

from .cli import main

sys.exit(main())
