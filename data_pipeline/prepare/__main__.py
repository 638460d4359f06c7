"""`python -m data_pipeline.prepare ...` (see data_pipeline.prepare.build_set)."""

import sys

from data_pipeline.prepare.build_set import main

sys.exit(main())
