"""Test-session settings: nothing may call out, and torch stays on one thread per process."""

from __future__ import annotations

import os

from fedkd.launch import OFFLINE_ENV

os.environ.update(OFFLINE_ENV)  # before anything imports flwr, ray or datasets
