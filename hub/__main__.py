"""`python -m hub`: the same as the `doorscan-hub` command."""

from hub.cli import main

raise SystemExit(main())
