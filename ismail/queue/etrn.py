"""ETRN (RFC 1985) from this side: when ISMail starts, it asks its backup MX hosts
(``outgoing.etrn_hosts``) to send what they hold for our domains at once, instead of at
their next retry, which after a long outage may be an hour away.

One short SMTP session per host, in a thread of its own: EHLO, one ETRN per local domain,
QUIT.  A host that does not answer is logged and left alone: it delivers at its next retry
anyway; ETRN only makes that sooner.
"""
from __future__ import annotations

import ipaddress
import logging
import smtplib
import threading
from typing import TYPE_CHECKING, Callable

from ..config import host_name_problem

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("ismail.etrn")

TIMEOUT = 30.0
FORM = 'expected "host" or "host:port", e.g. "backup.example.com" or "192.0.2.25:2525"'


def parse_host(text: str) -> tuple[str, int]:
    """ "backup.example.com", "192.0.2.25:2525", "[2001:db8::25]:25" -> (host, port);
    ValueError with a reason fit for the user."""
    s = text.strip()
    if s.startswith("["):
        end = s.find("]")
        if end < 0 or (s[end + 1:] and not s[end + 1:].startswith(":")):
            raise ValueError("an IPv6 address goes in brackets: [2001:db8::25]:25")
        host, port_text = s[1:end], s[end + 2:] or "25"
    elif s.count(":") == 1:
        host, port_text = s.split(":")
    else:
        host, port_text = s, "25"
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"the port {port_text!r} is not a number from 1 to 65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        problem = host_name_problem(host)
        if problem:
            raise ValueError(f"{host!r}: {problem}") from None
    return host, int(port_text)


def ask(host: str, port: int, domains: list[str], helo: str,
        connect: Callable[..., smtplib.SMTP] = smtplib.SMTP) -> list[str]:
    """One session: ETRN for each domain; the replies, one line each (raises OSError or
    smtplib.SMTPException when the host cannot be talked to)."""
    answers = []
    with connect(host, port, local_hostname=helo, timeout=TIMEOUT) as smtp:
        smtp.ehlo_or_helo_if_needed()
        for domain in domains:
            code, text = smtp.docmd("ETRN", domain)
            answers.append(f"{code} {text.decode('utf-8', 'replace')}")
    return answers


def at_start(settings: "Settings") -> threading.Thread | None:
    """Ask every host in outgoing.etrn_hosts, in the background; None when there are none."""
    hosts = list(settings.outgoing.etrn_hosts)
    domains = sorted(settings.local_domains())
    if not hosts or not domains:
        return None

    def run() -> None:
        for text in hosts:
            try:
                host, port = parse_host(text)
                for domain, answer in zip(domains, ask(host, port, domains, settings.server_name)):
                    log.info("ETRN %s at %s: %s", domain, text, answer)
            except (OSError, smtplib.SMTPException, ValueError) as e:
                log.warning("ETRN at %s failed (it will deliver at its next retry): %s", text, e)

    thread = threading.Thread(target=run, name="etrn", daemon=True)
    thread.start()
    return thread
