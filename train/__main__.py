"""`python -m train train ...` / `python -m train eval ...`."""

import sys

from train.cli import main

sys.exit(main())
