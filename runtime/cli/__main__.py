"""``python -m ethos.runtime.cli``: the ``ethos`` command."""

import sys

from ethos.runtime.cli import main

sys.exit(main())
