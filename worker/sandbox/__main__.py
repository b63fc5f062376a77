"""``python -m worker.sandbox``: the sandbox's command line."""

from .cli import main

raise SystemExit(main())
