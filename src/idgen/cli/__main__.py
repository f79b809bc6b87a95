"""`python -m idgen.cli ...` (as `accelerate launch -m idgen.cli eval ...` needs)."""

import sys

from idgen.cli import main

sys.exit(main())
