"""``python -m device``: the door unit's command line (see `device.cli`)."""

import sys

from device.cli import main

sys.exit(main())
