"""``python -m nbjobs``: the ``nbjobs`` command."""

from .cli.main import main

raise SystemExit(main())
