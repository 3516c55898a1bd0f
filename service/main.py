"""The gateway app factory: wiring only (state, routers, exception handlers, OpenAPI)."""

from __future__ import annotations

import copy
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from contract import jobstore
from contract.schemas import JobCreate
from contract.settings import GatewaySettings
from contract.storage import Storage
from service.auth import KeyRing
from service.deps import AppState
from service.errors import register_handlers
from service.housekeeping import Housekeeper
from service.routes import batches, files, health, jobs
from service.urlguard import UrlGuard

log = logging.getLogger("omnibatch.gateway")
# Every command the gateway sends is answered in milliseconds; a Redis that stops answering
# with its connections open (stopped, its host stuck) becomes a 503 after redis-py's retries,
# about 4 × this, instead of a request that hangs.
REDIS_REPLY_S = 2.0


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    keys = KeyRing(settings.key_pairs())
    if keys.open:  # settings validation allows this on a loopback bind only
        log.warning("no API keys: running without auth on %s (local mode)", settings.host)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        r = jobstore.connect(settings.redis_url, socket_timeout=REDIS_REPLY_S)
        storage = Storage(settings.data_dir)
        app.state.omnibatch = AppState(
            settings=settings,
            redis=r,
            storage=storage,
            keys=keys,
            guard=UrlGuard(settings.allow_private_urls),
        )
        housekeeper = Housekeeper(r, storage, settings)
        housekeeper.start()
        try:
            yield
        finally:
            housekeeper.stop()
            r.close()

    app = FastAPI(
        title="omnibatch",
        version="0.1.0",
        summary="Batch media processing with Nemotron 3 Nano Omni",
        lifespan=lifespan,
        debug=False,
    )
    routers = (health.router, jobs.router, files.router, batches.router)
    for router in routers:
        app.include_router(router)
    register_handlers(app, settings.debug, [route for r in routers for route in r.routes])
    app.openapi = lambda: _openapi(app)
    return app


def _openapi(app: FastAPI) -> dict:
    """The generated schema plus the submit route's request (parsed from a stream, so FastAPI
    cannot see it): JobCreate as each door accepts it. The upload's `request` part has no
    `input`; the JSON body must have one."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        create = JobCreate.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(create.pop("$defs", {}))
        upload, url = copy.deepcopy(create), copy.deepcopy(create)
        del upload["properties"]["input"]
        url["properties"]["input"] = {"$ref": "#/components/schemas/InputSpec"}
        url["required"] = ["input"]
        components["JobCreateUpload"] = upload | {"title": "JobCreateUpload"}
        components["JobCreateUrl"] = url | {"title": "JobCreateUrl"}
        app.openapi_schema = schema
    return app.openapi_schema
