"""`python -m codebrain.cli` (how the training rules run a step under accelerate launch)."""

import sys

from codebrain.cli import main

sys.exit(main())
