"""``python -m dclnet`` behaves like the ``dclnet`` command (used by torchrun)."""

import sys

from dclnet.cli import main

sys.exit(main())
