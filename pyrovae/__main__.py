"""``python -m pyrovae``: the same command as ``pyrovae`` (:func:`pyrovae.cli.main`)."""

from pyrovae.cli import main

raise SystemExit(main())
