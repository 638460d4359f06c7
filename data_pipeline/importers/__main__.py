"""`python -m data_pipeline.importers chatml|pairs|split ...` (see data_pipeline.importers.cli)."""

import sys

from data_pipeline.importers.cli import main

sys.exit(main())
