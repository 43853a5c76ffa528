"""Test-session settings: nothing may call out, and torch stays on one thread per process."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from fedkd.runtime.launch import OFFLINE_ENV

os.environ.update(OFFLINE_ENV)  # before anything imports flwr, ray or datasets
if "FEDKD_CACHE_DIR" not in os.environ:  # fedkd.data's on-disk cache: one per test session
    _cache = tempfile.mkdtemp(prefix="fedkd-test-cache-")
    os.environ["FEDKD_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, True)
