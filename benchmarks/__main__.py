"""`python -m benchmarks`: the same as `outboxkit bench`."""

import sys

from benchmarks.runner import main

sys.exit(main())
