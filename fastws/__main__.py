"""``python -m fastws``: the same as the ``fastws`` command."""

from .cli import main

raise SystemExit(main())
