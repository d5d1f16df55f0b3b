"""``python -m anet_lite``: the same CLI as the ``anet-lite`` script."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
