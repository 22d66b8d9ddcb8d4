"""``python -m headrace``: the command line (see ``_cli``)."""

from __future__ import annotations

from headrace._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
