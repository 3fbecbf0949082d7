"""`python -m app.cli`: the same as the `instructforge` console script."""

from app.cli import main

raise SystemExit(main())
