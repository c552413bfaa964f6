"""C{python -m sixchat.cli}: the same as the C{sixchat} console script."""

from sixchat.cli import main

raise SystemExit(main())
