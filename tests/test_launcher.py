"""The console entry re-executes itself once with the allocator variables (DESIGN §10)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mssl.launcher import ALLOCATOR_ENV, LAUNCHED

PROBE = """
import os
from mssl.launcher import ensure_allocator_env
ensure_allocator_env()
print(os.environ.get("MALLOC_MMAP_MAX_"), os.environ.get("OMP_WAIT_POLICY"), os.environ.get("{launched}"))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="re-execution is Linux-only")
def test_entry_reexecutes_once_with_missing_variables_and_keeps_given_ones(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE.format(launched=LAUNCHED), encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV and k != LAUNCHED}
    result = subprocess.run([sys.executable, str(script)], env=clean, capture_output=True, text=True, encoding="utf-8", check=True)
    assert result.stdout.split() == ["0", "PASSIVE", "1"]
    given = {**clean, "OMP_WAIT_POLICY": "ACTIVE"}
    result = subprocess.run([sys.executable, str(script)], env=given, capture_output=True, text=True, encoding="utf-8", check=True)
    assert result.stdout.split() == ["0", "ACTIVE", "1"]
    opted_out = {**clean, "MSSL_NO_REEXEC": "1"}
    result = subprocess.run([sys.executable, str(script)], env=opted_out, capture_output=True, text=True, encoding="utf-8", check=True)
    assert result.stdout.split() == ["None", "None", "None"]
