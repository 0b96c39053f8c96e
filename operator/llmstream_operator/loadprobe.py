"""Reads each gateway pod's `GET /v1/load` and sums the streams (thin I/O for the autoscaler)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import httpx
from pydantic import ValidationError

from llmstream.addressmap import AddressMapping, mapped_url
from llmstream.endpointslices import ready_urls
from llmstream.loadreport import LoadReport

from . import names
from .policy import LoadSample

logger = logging.getLogger(__name__)


class LoadProbe(Protocol):
    """Something that measures the load behind a set of gateway addresses."""

    async def sample(self, urls: Sequence[str], now: float) -> LoadSample | None:
        """The summed load, or None when any gateway could not be read."""

    async def aclose(self) -> None:
        """Release connections."""


def gateway_urls(slice_body: Mapping[str, Any]) -> list[str]:
    """Base URLs of the ready endpoints of one EndpointSlice of a gateway Service."""
    return ready_urls([slice_body], names.PORT_NAME)


class HttpLoadProbe:
    """Polls every gateway pod concurrently with a short timeout.

    `address_map` sends pod addresses somewhere else (`--pod-address-map`): an operator run
    outside the cluster reads its gateways there instead of at unreachable pod addresses.
    """

    def __init__(self, *, timeout: float = 1.0, address_map: Sequence[AddressMapping] = ()) -> None:
        self._http = httpx.AsyncClient(timeout=timeout)
        self.address_map = tuple(address_map)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _read(self, url: str) -> LoadReport | None:
        try:
            response = await self._http.get(f"{url}/v1/load")
            response.raise_for_status()
            return LoadReport.model_validate_json(response.content)
        except (httpx.HTTPError, ValidationError) as exc:
            logger.warning("cannot read gateway load from %s: %s", url, exc)
            return None

    async def sample(self, urls: Sequence[str], now: float) -> LoadSample | None:
        """Sum of all gateways; None if there is none or one did not answer.

        A partial sum would under-count the load and could scale an endpoint down while its
        streams run on the gateway that did not answer.
        """
        if not urls:
            return None
        targets = [mapped_url(url, self.address_map) for url in urls]
        reports = await asyncio.gather(*(self._read(url) for url in targets))
        return summed(reports, now)


def summed(reports: Iterable[LoadReport | None], now: float) -> LoadSample | None:
    """Add the reports up; None when any is missing."""
    active = pending = 0
    idle: list[float] = []
    for report in reports:
        if report is None:
            return None
        active += report.active_streams
        pending += report.pending_streams
        if report.idle_seconds is not None:  # None: no stream ever ran there, or not said
            idle.append(report.idle_seconds)
    # The endpoint is as idle as its most recently busy gateway.
    return LoadSample(at=now, active=active, pending=pending, idle_seconds=min(idle, default=None))
