"""``python -m dclnet.reporting [DOC... RESULTS_DIR] [--check]`` (see :mod:`dclnet.reporting`)."""

import sys

from dclnet.reporting import main

sys.exit(main())
