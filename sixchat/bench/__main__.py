"""C{python -m sixchat.bench}; see L{sixchat.bench.cli}."""

import sys

from sixchat.bench.cli import main

sys.exit(main())
