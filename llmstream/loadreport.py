"""The gateway's load report, `GET /v1/load`: written by the gateway, read by the operator's
autoscaler (PROTOCOL.md). Readers ignore fields they do not know, so either side may add one."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class BackendLoad(BaseModel):
    """One inference backend as the gateway sees it."""

    model_config = ConfigDict(extra="ignore")

    url: str
    ready: bool
    active: int = Field(ge=0)
    capacity: int = Field(ge=0)


class LoadReport(BaseModel):
    """Streams on backends, streams held apart, and how long the gateway has been idle."""

    model_config = ConfigDict(extra="ignore")

    active_streams: int = Field(ge=0)
    pending_streams: int = Field(ge=0)
    # Seconds since a stream last ran on that gateway (0 while one runs; null when none ever
    # did). Without it only the polls themselves tell when streams ran.
    idle_seconds: float | None = Field(default=None, ge=0)
    backends: list[BackendLoad] = Field(default_factory=list)
