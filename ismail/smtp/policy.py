"""Who may do what: the parts of the settings a session asks about on every command.

Prepared once per settings change (MailServer.apply), not per connection: parsing
the trusted networks or rebuilding the set of local domains for every RCPT costs
real time at a thousand messages a second.  A connection keeps the Policy that was
in force when it arrived.
"""
from __future__ import annotations

from ..config import Settings, ip_in_networks

CACHE_ADDRESSES = 4096


class Policy:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.local_domains = settings.local_domains()
        self._networks = settings.trusted_network_objects()
        self._trusted: dict[str, bool] = {}  # per client address: ipaddress parsing is slow

    def is_trusted(self, ip: str) -> bool:
        """A client in trusted_networks may relay (IPv4-mapped IPv6 counts as IPv4)."""
        known = self._trusted.get(ip)
        if known is None:
            if len(self._trusted) >= CACHE_ADDRESSES:
                self._trusted.clear()
            known = self._trusted[ip] = ip_in_networks(ip, self._networks)
        return known

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower() in self.local_domains
