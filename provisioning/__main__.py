"""`python -m provisioning`: see `provisioning.cli`."""

from provisioning.cli import main

raise SystemExit(main())
