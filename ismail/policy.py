"""Who may do what: the parts of the settings a session asks about on every command.

Prepared once per settings change (MailServer.apply), not per connection: parsing
the trusted networks or rebuilding the set of local domains for every RCPT costs
real time at a thousand messages a second.  A connection keeps the Policy that was
in force when it arrived.
"""
from __future__ import annotations

import ipaddress

from .config import Settings


class Policy:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.local_domains = settings.local_domains()
        self._networks = settings.trusted_network_objects()

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower() in self.local_domains

    def is_trusted(self, ip: str) -> bool:
        """A client in trusted_networks may relay (IPv4-mapped IPv6 counts as IPv4)."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        mapped = getattr(addr, "ipv4_mapped", None)
        candidates = (addr,) if mapped is None else (addr, mapped)
        return any(a in net for net in self._networks for a in candidates if a.version == net.version)
