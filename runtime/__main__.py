"""`python -m runtime ...`: the runtime's command line (see runtime/cli.py)."""

import sys

from runtime.cli import main

sys.exit(main())
