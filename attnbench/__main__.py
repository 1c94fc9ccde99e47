"""``python -m attnbench``: the same command line as the ``attnbench`` script."""
import sys

from .cli import main

sys.exit(main())
