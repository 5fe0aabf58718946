"""`python -m factory.cli`: the same command as `factory`."""

import sys

from factory.cli import main

sys.exit(main())
