"""``python -m dakr`` runs the command line interface."""

from dakr.cli import main

raise SystemExit(main())
