"""``python -m worker``: the clix-worker CLI."""

from worker.cli import main

raise SystemExit(main())
