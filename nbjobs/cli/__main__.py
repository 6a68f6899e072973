"""``python -m nbjobs.cli``: the ``nbjobs`` command."""

from .main import main

raise SystemExit(main())
