"""The client is light: importing it loads neither the service nor torch, nor a database driver."""

from __future__ import annotations

import subprocess
import sys

from tests.procs import ROOT


def test_importing_the_client_loads_no_service_code_torch_or_database_driver() -> None:
    probe = (
        "import sys, instructforge.client\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'app', 'workers', 'trainer', 'torch', 'transformers', 'sqlalchemy', 'psycopg', 'celery', 'fastapi'})\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    assert (
        "instructforge.client"
        in subprocess.run(
            [sys.executable, "-c", "import sys, instructforge.client; print(*sys.modules)"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
