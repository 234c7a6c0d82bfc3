"""``python -m batchmagic.simulator [flags]``: serve the simulator until SIGINT/SIGTERM.

Prints exactly one line to stdout once listening:
``batchmagic simulator listening on http://127.0.0.1:<port>/v1``.
"""

from __future__ import annotations

import sys

from ._config import SimConfig
from ._server import check_host, run_server


def main(argv: list[str] | None = None) -> int:
    parser = SimConfig.arg_parser()
    ns = parser.parse_args(argv)
    try:
        cfg = SimConfig.from_namespace(ns)
        check_host(cfg)
    except (ValueError, TypeError) as e:
        parser.error(str(e))  # exits 2 with usage on stderr
    run_server(cfg, ready_file=ns.ready_file, exit_with_stdin=ns.exit_with_stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
