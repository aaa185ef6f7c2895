"""Host and port as the settings write them ("ip", "ip:port", "v6", "[v6]:port").

Its own small module: the delivery process reads dns_servers with it and would
otherwise import all of config (its settings classes cost ~4 MB of memory there).
"""
from __future__ import annotations

import ipaddress
import re

_PORT_RE = re.compile(r"[0-9]{1,5}", re.ASCII)


def split_host_port(text: str, need_port: bool) -> tuple[str, int | None]:
    """Parse "ip", "ip:port", "v6" or "[v6]:port"; ValueError carries a reason fit for the user."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("missing ']' after the IPv6 address")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError("unexpected text after ']'")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        # A bare IPv6 address cannot carry a port: its last group would be taken for one.
        if need_port:
            raise ValueError("an IPv6 address must be written in brackets")
        host, port_text = text, None
    else:
        host, port_text = text, None
    if not host:
        raise ValueError("the IP address is missing")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if text.startswith("[") and ip.version != 6:
        raise ValueError("only IPv6 addresses go in brackets")
    if port_text is None:
        if need_port:
            raise ValueError("the port is missing")
        return host, None
    if not _PORT_RE.fullmatch(port_text):
        raise ValueError(f"port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError("port must be 1–65535")
    return host, port
