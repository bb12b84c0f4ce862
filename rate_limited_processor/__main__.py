"""`python -m rate_limited_processor`: see the `cli` package."""

import sys

from .cli import main

sys.exit(main())
