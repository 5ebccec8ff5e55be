"""``python -m polmap.cli``: the same as the ``polmap`` command."""

import sys

from polmap.cli import main

sys.exit(main())
