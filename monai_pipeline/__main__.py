"""``python -m monai_pipeline ...``: the command line (same as ``monai-pipeline``; under torchrun too)."""

import sys

from monai_pipeline.app.cli import main

sys.exit(main())
