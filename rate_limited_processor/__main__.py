"""`python -m rate_limited_processor`: see `cli.py`."""

import sys

from .cli import main

sys.exit(main())
