"""``python -m rnnlab`` (and ``torchrun -m rnnlab``) run the CLI."""

import sys

from rnnlab.cli import main

sys.exit(main())
