"""Test-wide environment: offline, no analytics, Prefect state in a temp dir (never ~/.prefect)."""

import os
import tempfile

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# Results and caches would otherwise leak between test sessions through ~/.prefect.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="al-tests-prefect-")
