"""SSRF guard for media and webhook URLs.

A URL is allowed only when every address its host resolves to is a public unicast address,
or when the host (or the address, by CIDR) is on the allow-list. IPv4 addresses embedded in
IPv6 (IPv4-mapped, NAT64, 6to4) are judged as the IPv4 address they carry. The caller
connects to the address that was checked (`Target.connect_url`), so a DNS answer that changes
between the check and the connection cannot smuggle in a private address. Call `resolve`
before every request, including each retry; redirects are never followed by our clients.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import httpx

from service.errors import UrlFetchFailed, UrlForbidden

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class Target:
    """A checked URL: connect to `connect_url`, send `host_header`, verify TLS for `sni_host`."""

    url: str
    connect_url: str
    host_header: str
    sni_host: str


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if ip.version != 6:
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def is_public(ip: IPAddress) -> bool:
    inner = _embedded_v4(ip)
    if inner is not None and not is_public(inner):
        return False
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


class UrlGuard:
    def __init__(self, allow: list[str] | tuple[str, ...] = ()):
        self.allow_nets = []
        self.allow_hosts = set()
        for entry in allow:
            try:
                self.allow_nets.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self.allow_hosts.add(entry.lower())

    def _allowed(self, ip: IPAddress) -> bool:
        if is_public(ip):
            return True
        return any(ip.version == net.version and ip in net for net in self.allow_nets)

    def resolve(self, url: str) -> Target:
        """Check `url` and return where to connect. Raises UrlForbidden or UrlFetchFailed."""
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise UrlForbidden("not a valid URL") from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise UrlForbidden("only http and https URLs with a host are accepted")
        host = parsed.host.lower()
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        addresses = self._addresses(host, port)
        if host not in self.allow_hosts:
            for ip in addresses:
                if not self._allowed(ip):
                    raise UrlForbidden(f"{host} resolves to a non-public address")
        return Target(
            url=url,
            connect_url=str(parsed.copy_with(host=str(addresses[0]))),
            host_header=parsed.netloc.decode("ascii"),
            sni_host=host,
        )

    @staticmethod
    def _addresses(host: str, port: int) -> list[IPAddress]:
        if _is_ip(host):
            return [ipaddress.ip_address(host)]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise UrlFetchFailed(f"{host} does not resolve") from exc
        # scope ids ("fe80::1%eth0") are dropped: the address alone decides
        ips = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}
        if not ips:
            raise UrlFetchFailed(f"{host} does not resolve")
        return sorted(ips, key=lambda a: (a.version, int(a)))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
