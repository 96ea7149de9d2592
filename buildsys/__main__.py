"""`python -m buildsys`: the build engine's command line."""

import sys

from .cli import main

sys.exit(main())
