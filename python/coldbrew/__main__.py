"""``python -m coldbrew``: the same as the ``coldbrew`` command."""

import sys

from coldbrew.cli import main

if __name__ == "__main__":
    sys.exit(main())
