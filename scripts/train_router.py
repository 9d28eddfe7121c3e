#!/usr/bin/env python
"""Train the MoE router (also `loraplex train-router`); see `python scripts/train_router.py --help`."""

import sys

from loraplex.cli.train_router import main

if __name__ == "__main__":
    sys.exit(main())
