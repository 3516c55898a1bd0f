"""What every step of a batch needs: Redis, the data store, the settings, the URL guard."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from contract.settings import GatewaySettings
from contract.storage import Storage
from service.urlguard import UrlGuard


@dataclass(frozen=True)
class BatchContext:
    redis: redis.Redis
    storage: Storage
    settings: GatewaySettings
    guard: UrlGuard
