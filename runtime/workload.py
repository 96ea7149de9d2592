"""`python -m runtime.workload NAME ...`: shorthand for `python -m runtime workload NAME ...`."""

import sys

from runtime.cli import main

if __name__ == "__main__":
    sys.exit(main(["workload", *sys.argv[1:]]))
