"""The production files stay valid: compose config, the documented settings, the Dockerfile's commands."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from app.config import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose (Debian package) not installed"
)
def test_docker_compose_config_validates_with_all_five_services():
    out = subprocess.run(["docker-compose", "config"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for service in ("api:", "worker:", "gpu-worker:", "postgres:", "redis:"):
        assert f"  {service}" in out.stdout
    assert "- --queues\n    - gpu\n    - --concurrency\n    - '1'" in out.stdout


def test_env_example_documents_every_setting():
    documented = set(re.findall(r"^(IF_[A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    fields = {f"IF_{name.upper()}" for name in Settings.model_fields}
    assert fields == documented
