"""The open endpoints: the welcome message and the health check."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text

from api import schemas
from api.routes.contract import add_head_route

logger = logging.getLogger(__name__)

router = APIRouter(tags=["service"])


@router.get("/", response_model=schemas.Message)
def root() -> schemas.Message:
    """Where to start."""
    return schemas.Message(message="Online Retail API: see /docs; data endpoints need the X-API-Key header")


@router.get(
    "/health",
    response_model=schemas.HealthPublic,
    responses={503: {"model": schemas.HealthPublic, "description": "The database does not answer"}},
)
def health(request: Request) -> schemas.HealthPublic | JSONResponse:
    """200 when the service and its database answer, 503 when the database does not."""
    engine: Engine = request.app.state.engine
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:  # any failure to answer is "unavailable"; the log has the reason
        logger.warning("health: the database does not answer", exc_info=True)
        return JSONResponse(status_code=503, content={"status": "error", "database": "unavailable"})
    return schemas.HealthPublic(status="ok", database="ok")


add_head_route(router, "/", root)
add_head_route(router, "/health", health)
