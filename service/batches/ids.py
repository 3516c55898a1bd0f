"""Ids of files and batches: a prefix, 12 hex digits of creation milliseconds, 16 random hex
digits (the job ids' scheme), so that lexical order is creation order in the owner indexes."""

from __future__ import annotations

import re
import secrets
import time

FILE_PREFIX = "file-"  # OpenAI's spelling
BATCH_PREFIX = "batch_"
FILE_ID_RE = re.compile(r"^file-[0-9a-f]{28}$")
BATCH_ID_RE = re.compile(r"^batch_[0-9a-f]{28}$")


def new_id(prefix: str) -> str:
    return f"{prefix}{int(time.time() * 1000):012x}{secrets.token_hex(8)}"
