"""``python -m melodyguard`` runs the command line."""

import sys

from melodyguard.cli import main

sys.exit(main())
