#!/usr/bin/env python
"""Validate config/cluster/rayservice.yaml against KubeRay's RayService CRD (see --help)."""

import sys

from loraplex.cli.rayservice_check import main

if __name__ == "__main__":
    sys.exit(main())
