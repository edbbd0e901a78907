"""``python -m mlembed COMMAND ...``, the same as the ``mlembed`` script: see mlembed.cli."""

import sys

from mlembed.cli import main

if __name__ == "__main__":
    sys.exit(main())
