"""``python -m reram_emu.experiments [--out DIR] [--seed N]``: run the embedded default study."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import demo


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reram_emu.experiments",
                                     description=demo.__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/demo"),
                        help="report folder (default: reports/demo)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"error: cannot write to {args.out}: {error}", file=sys.stderr)
        return 2
    demo.run(args.out, args.seed)
    print(f"report written to {args.out}/summary.md and {args.out}/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
