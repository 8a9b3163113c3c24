"""`python -m xinzhou` is the same as the `xinzhou` console script."""

import sys

from xinzhou.cli import main

sys.exit(main())
