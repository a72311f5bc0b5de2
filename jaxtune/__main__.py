"""``python -m jaxtune``: the ``jaxtune`` command (see :mod:`jaxtune.cli`)."""

from jaxtune.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
