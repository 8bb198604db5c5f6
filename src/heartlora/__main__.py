"""`python -m heartlora` runs the command-line tool."""

from heartlora.cli import main

raise SystemExit(main())
