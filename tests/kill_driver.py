"""Run an entry point with a SIGKILL at its n-th file operation under a folder (tests/faults.py).

    python tests/kill_driver.py N UNDER MATCH MODULE [ARGS...]

MODULE is train_video, train_vae, data.precache or generate; its main(ARGS) runs. The process dies by
SIGKILL at the N-th file operation under UNDER whose description contains MATCH ("" = any), or exits
normally when there are fewer.
"""

import importlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faults import crash_at  # noqa: E402


def main() -> None:
    n, under, match, module, *args = sys.argv[1:]
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(k, None)
    entry = importlib.import_module(module).main
    with crash_at(int(n), under, kill=True, match=match):
        code = entry(args)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
