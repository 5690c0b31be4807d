"""Regenerate every generated file under deploy/, in dependency order:

    .venv/bin/python deploy/render_all.py

1. deploy/nats/accounts.conf          (from the code's subject scheme)
2. deploy/gateway/nginx.deployed.conf (from deploy/gateway/templates)
3. deploy/k8s/configmaps.generated.yaml (copies of the above and of the other config files)
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    for script, argv in (("nats/render_accounts.py", []),
                         ("gateway/render.py", ["deployed"]),
                         ("k8s/render_configmaps.py", [])):
        sys.argv = [str(HERE / script), *argv]
        try:
            runpy.run_path(str(HERE / script), run_name="__main__")
        except SystemExit as done:
            if done.code not in (0, None):
                return int(done.code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
