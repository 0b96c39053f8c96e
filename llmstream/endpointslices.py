"""EndpointSlices (the API's JSON, camelCase keys) -> base URLs and their readiness.

One reading for both readers: the gateway finds its inference backends this way, the
operator its gateway pods for the load probe. An endpoint is ready when `conditions.ready` is
true or absent (the API's meaning of nil) and it is not terminating; an address is IPv6 when
its slice says so (or, for slices written by hand, when it has a colon).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def _port(item: Mapping[str, Any], port_name: str) -> int | None:
    """The port named `port_name`, or the slice's only port."""
    ports = [p for p in item.get("ports") or [] if isinstance(p, Mapping)]
    named = [p for p in ports if p.get("name") == port_name]
    chosen = named or (ports if len(ports) == 1 else [])
    port = chosen[0].get("port") if chosen else None
    return port if isinstance(port, int) and port > 0 else None


def readiness(slices: Iterable[Mapping[str, Any]], port_name: str) -> dict[str, bool]:
    """`http://address:port` of every endpoint -> whether it is ready (ready anywhere wins)."""
    result: dict[str, bool] = {}
    for item in slices:
        port = _port(item, port_name)
        if port is None:
            continue
        ipv6 = item.get("addressType") == "IPv6"
        for endpoint in item.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            ready = conditions.get("ready") is not False and not conditions.get("terminating")
            for address in endpoint.get("addresses") or []:
                host = f"[{address}]" if ipv6 or ":" in address else address
                url = f"http://{host}:{port}"
                result[url] = result.get(url, False) or ready
    return result


def ready_urls(slices: Iterable[Mapping[str, Any]], port_name: str) -> list[str]:
    """The base URLs of the ready endpoints only, in the slices' order."""
    return [url for url, ready in readiness(slices, port_name).items() if ready]
