"""The client is light: importing it loads neither the service nor torch, nor a database driver."""

from __future__ import annotations

import subprocess
import sys

from tests.procs import ROOT

HEAVY = ("app", "workers", "trainer", "torch", "transformers", "sqlalchemy", "psycopg", "celery", "fastapi")


def test_importing_the_client_loads_no_service_code_torch_or_database_driver() -> None:
    probe = (
        "import sys, instructforge.client\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(','.join(heavy) or 'none')\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "none"
