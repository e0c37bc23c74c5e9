"""``python -m instantid_ext``: see :mod:`instantid_ext.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
