"""``python -m vmscan``."""

from vmscan.cli import main

raise SystemExit(main())
