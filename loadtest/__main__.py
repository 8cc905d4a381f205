"""``python -m loadtest run SCENARIO ...`` (loadtest/runner.py); ``list`` names them."""

import sys

from loadtest.runner import main

sys.exit(main())
