"""Pod addresses reached somewhere else: `NETWORK=HOST:PORT` mappings for components run
outside the cluster.

The gateway (`--backend-address-map`, its inference pods) and the operator (`--pod-address-map`,
its gateway pods' `/v1/load`) contact pods at the addresses EndpointSlices give. Run outside the
cluster, in a test or while debugging with `kubectl port-forward`, those addresses cannot be
reached (and on a fake-node cluster nothing owns them): a mapping sends every address of one
network to one local `HOST:PORT` instead. The first mapping whose network holds an address wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, field_validator


def host_and_port(value: str) -> str:
    """`value` when it is `HOST:PORT` (IPv6 hosts in brackets); else a ValueError naming it."""
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} must be HOST:PORT with a port from 1 to 65535")
    return value


class AddressMapping(BaseModel):
    """`NETWORK=HOST:PORT`: a pod whose address lies in `network` is reached at `target`
    instead of at its own address and port."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    network: IPv4Network | IPv6Network
    target: str

    @field_validator("target")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        return host_and_port(value)

    @classmethod
    def parse(cls, text: str) -> AddressMapping:
        """Read `NETWORK=HOST:PORT` (a bare address is a one-address network)."""
        network, equals, target = text.strip().partition("=")
        if not equals:
            raise ValueError(f"address map {text!r} must look like NETWORK=HOST:PORT")
        try:
            return cls(network=ip_network(network.strip()), target=host_and_port(target.strip()))
        except ValueError as exc:
            raise ValueError(f"address map {text!r}: {exc}") from exc

    def covers(self, address: IPv4Address | IPv6Address) -> bool:
        """Whether `address` lies in this mapping's network."""
        return address.version == self.network.version and address in self.network

    def __str__(self) -> str:
        return f"{self.network}={self.target}"


def parse_all(texts: Sequence[str]) -> tuple[AddressMapping, ...]:
    """Every mapping of a flag given several times (or comma-separated in one value)."""
    items = [part for text in texts for part in text.split(",") if part.strip()]
    return tuple(AddressMapping.parse(item) for item in items)


def mapped_url(url: str, mappings: Sequence[AddressMapping]) -> str:
    """`url` with its host and port replaced by the first mapping whose network holds its
    address; `url` itself when none does (or its host is a name, not an address)."""
    parts = urlsplit(url)
    try:
        address = ip_address(parts.hostname or "")
    except ValueError:
        return url
    for mapping in mappings:
        if mapping.covers(address):
            return f"{parts.scheme or 'http'}://{mapping.target}{parts.path}"
    return url
