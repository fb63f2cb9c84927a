"""``python -m otel_mixpanel.cli``: the ``otel-mixpanel`` command, without the script."""

import sys

from otel_mixpanel.cli import main

sys.exit(main())
