"""``python -m cellgen.models DEMO_OUT``: export a ``cellgen demo`` run's three trained lines as
the shipped models and rewrite SHA256SUMS (the second half of ``make models``)."""

from __future__ import annotations

import sys
from pathlib import Path

from cellgen.errors import CellgenError
from cellgen.io import sha256_file
from cellgen.models import ship_demo_models


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m cellgen.models DEMO_OUT   (the folder of a finished cellgen demo run)", file=sys.stderr)
        return 2
    try:
        shipped = ship_demo_models(Path(argv[0]))
    except CellgenError as err:
        print(err.user_line, file=sys.stderr)
        return err.exit_code
    for name, path in shipped.items():
        print(f"{name}: {path}  ({path.stat().st_size / 1e6:.2f} MB, sha256 {sha256_file(path)[:16]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
