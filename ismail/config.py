"""ISMail settings: one JSON file, ``DATA/ismail.json``, read at start-up and written by the GUI.

The model:

* A missing file means "all defaults"; a missing key means "that key's default".  The file
  therefore only needs to hold what the user changed.
* Validation is strict about what we know (types, ranges, address syntax) and lenient about
  what we do not: an unknown key is a warning, never an error, so a file written by a newer
  ISMail still loads.  Unknown top-level keys are kept in ``Settings.extra`` and written back
  by ``save()``.
* Every problem is reported at once, one line per problem, naming the dotted key, the bad
  value and what is allowed, so a user editing the file by hand can fix everything in one go.
* ``validate()`` is the single source of truth for what is valid: ``from_dict()`` copies the
  raw JSON values into a ``Settings`` and then runs ``validate()`` on it, and the GUI runs the
  same function on the ``Settings`` it builds.
* ``load()`` never writes; ``save()`` writes nothing unless the settings are valid, and then
  replaces the file atomically so a crash leaves the old or the new file, never half of one.
"""
from __future__ import annotations

import copy
import ipaddress
import json
import logging
import os
import re
import socket
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ismail.fsutil import atomic_write
from ismail.net.hostport import split_host_port
from ismail.platform.protect import ProtectError, protect, unprotect
from ismail.platform.winplatform import portable_data_dir

log = logging.getLogger("ismail.config")

SETTINGS_FILE = "ismail.json"
TLS_MODES = ("none", "starttls", "starttls-optional", "tls")
_LISTEN_FORM = ('expected "ip:port", e.g. "0.0.0.0:25" or "[::]:25", optionally followed by '
                '"tls" (implicit TLS, port 465) or "submission" (AUTH needed to relay, port 587)')
_POP3_LISTEN_FORM = ('expected "ip:port", e.g. "0.0.0.0:110" or "[::]:110", optionally followed by '
                     '"tls" (implicit TLS, port 995)')
_IMAP_LISTEN_FORM = ('expected "ip:port", e.g. "0.0.0.0:143" or "[::]:143", optionally followed by '
                     '"tls" (implicit TLS, port 993)')
_DNS_FORM = 'expected "ip" or "ip:port", e.g. "192.0.2.53", "192.0.2.53:5353" or "[2001:db8::53]:53"'
_HOST_FORM = 'expected letters, digits and hyphens in dot-separated labels, e.g. "mail.example.com"'
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?", re.ASCII)


def host_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid host/domain name (RFC 1123 syntax), or None if it is."""
    if not name:
        return "the name is empty"
    if len(name) > 253:
        return "the name is longer than 253 characters"
    for label in name.split("."):
        if not label:
            return "it has an empty label (two dots in a row, or a dot at the start or end)"
        if len(label) > 63:
            return f"label {label[:20] + '...'!r} is longer than 63 characters"
        if not _LABEL_RE.fullmatch(label):
            return f"label {label!r} may hold only letters, digits and inner hyphens"
    return None


def default_server_name() -> str:
    """This machine's name for the SMTP greeting; only names that would pass validation are used."""
    for lookup in (socket.getfqdn, socket.gethostname):
        try:
            name = lookup()
        except OSError:
            continue
        if name and host_name_problem(name) is None:
            return name
    return "localhost"


@dataclass
class IncomingSettings:
    max_connections: int = 20
    max_per_host: int = 5


@dataclass
class OutgoingSettings:
    max_connections: int = 2
    mx_port: int = 25
    # Mail for these domains goes out only over TLS with a verified certificate; when that
    # is not possible it waits in the queue (and bounces when retry.lifetime_hours runs out).
    require_tls_domains: list[str] = field(default_factory=list)
    # Backup MX hosts ("host" or "host:port") asked by ETRN, when ISMail starts, to send what
    # they hold for the local domains at once (queue/etrn.py).
    etrn_hosts: list[str] = field(default_factory=list)
    # The SMTP conversations of outgoing mail (and its DKIM signing) run in a second
    # process, which uses another processor core (queue/courier.py); false: in the
    # server's own process (a one-core machine gains nothing from two).  Read at start.
    delivery_process: bool = True


@dataclass
class SmartHostSettings:
    enabled: bool = False
    host: str = ""
    port: int = 25
    exclusive: bool = True
    authenticate: bool = False
    account: str = ""
    password: str = ""
    tls: str = "starttls"
    verify_certificate: bool = True
    spf_include: str = ""  # the provider's SPF domain (e.g. "spf.protection.outlook.com"), for `ismail dns`


@dataclass
class TimeoutSettings:
    command_seconds: int = 300
    session_seconds: int = 1800   # a whole session, however busy (slow-drip clients)
    min_data_rate: int = 500      # bytes/second a client must keep up during DATA (after 30 s)


@dataclass
class TLSSettings:
    certificate: str = ""         # PEM file; STARTTLS is offered only when both are set
    key: str = ""
    # With no certificate set: make a self-signed one for server_name on the first start
    # (DATA/tls/), so STARTTLS, POP3 STLS and IMAP STARTTLS work at once.
    self_signed: bool = True


@dataclass
class AuthSettings:
    allow_plaintext: bool = False     # offer AUTH without TLS to clients outside trusted_networks
    require_for_relay: bool = False   # even trusted networks must log in to relay
    enforce_sender: bool = False      # MAIL FROM must be the logged-in account
    ban_after_failures: int = 3       # hMailServer's defaults
    ban_window_minutes: int = 30
    ban_minutes: int = 60


@dataclass
class AccessSettings:
    blocked: list[str] = field(default_factory=list)   # CIDR list refused at connect
    # Client networks, sender addresses and domains ("*@example.com"): a whitelisted client or
    # sender skips every anti-spam check; a blacklisted one is refused (554) at MAIL FROM.
    whitelist: list[str] = field(default_factory=list)
    blacklist: list[str] = field(default_factory=list)


ACTIONS = ("off", "tag", "reject")  # "tag": an X-Spam header and delivery into Junk


@dataclass
class AntispamSettings:
    """Checks on mail from clients outside trusted_networks that have not logged in."""

    connection_rate: int = 60         # new SMTP connections a minute from one address (0 = no limit)
    greeting_pause_ms: int = 0        # wait before the greeting; a client that talks first is refused
    tls_handshake_seconds: int = 30
    rdns: str = "tag"                 # the client's name (PTR) must resolve back to its address
    dnsbl: list[str] = field(default_factory=list)  # "zen.spamhaus.org" or "zone=127.0.0.2,127.0.0.4-127.0.0.7"
    dnsbl_action: str = "reject"
    greylisting: bool = False
    greylist_delay_seconds: int = 300
    spf: str = "tag"
    dkim: str = "tag"                 # a failing signature and none that passes
    dmarc: str = "reject"             # honour the sender domain's policy (quarantine = Junk)
    rules: list = field(default_factory=list)  # content rules (antispam/rules.py)
    max_unknown_recipients: int = 20  # then 421, and the address counts towards a ban


@dataclass
class ProgramSettings:
    start_server_on_open: bool = True   # the window starts SMTP by itself when it opens


@dataclass
class Pop3Settings:
    enabled: bool = True
    listen: list[str] = field(default_factory=lambda: ["0.0.0.0:110"])
    max_connections: int = 20
    max_per_host: int = 5
    allow_plaintext: bool = False   # USER/PASS and AUTH without TLS from outside trusted_networks

    def listen_entries(self) -> list["ListenEntry"]:
        return [parse_listen(entry) for entry in self.listen] if self.enabled else []


@dataclass
class ImapSettings(Pop3Settings):
    listen: list[str] = field(default_factory=lambda: ["0.0.0.0:143"])
    max_per_host: int = 10   # a phone and a desktop each open several connections


@dataclass(frozen=True)
class ListenEntry:
    """One listening address with its flags: "0.0.0.0:465 tls", "0.0.0.0:587 submission"."""

    host: str
    port: int
    tls: bool = False          # implicit TLS from the first byte (port 465)
    submission: bool = False   # relaying needs AUTH here, whoever the client is

    @property
    def label(self) -> str:
        addr = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return addr + (" tls" if self.tls else "") + (" submission" if self.submission else "")


LISTEN_FLAGS = ("tls", "submission")


def parse_listen(text: str) -> ListenEntry:
    """ "ip:port" and optional flag words; ValueError with a reason fit for the user."""
    if not isinstance(text, str):
        raise ValueError("expected a string")
    words = text.split()
    if not words:
        raise ValueError("the entry is empty")
    host, port = split_host_port(words[0], need_port=True)
    flags = [w.lower() for w in words[1:]]
    for flag in flags:
        if flag not in LISTEN_FLAGS:
            raise ValueError(f"unknown flag {flag!r} (allowed: {', '.join(LISTEN_FLAGS)})")
    return ListenEntry(host, port, "tls" in flags, "submission" in flags)  # type: ignore[arg-type]


@dataclass
class DkimSettings:
    enabled: bool = True      # sign mail from local domains that have a key (DATA/dkim/)
    selector: str = ""        # the selector of new keys; "" means "ismail" and the year
    key_bits: int = 2048      # the size of new keys (RFC 8301: at least 1024)
    auto_keys: bool = True    # a local domain without a key gets one when the server starts


@dataclass
class SrsSettings:
    enabled: bool = True      # forwarded copies get an SRS sender of the primary domain
    max_age_days: int = 21    # bounces to older SRS addresses are refused


@dataclass
class RetrySettings:
    first_seconds: int = 300
    max_interval_seconds: int = 4000
    lifetime_hours: int = 120
    warn_hours: int = 0


_SECTIONS: dict[str, type] = {
    "incoming": IncomingSettings, "outgoing": OutgoingSettings, "smarthost": SmartHostSettings,
    "timeouts": TimeoutSettings, "retry": RetrySettings, "tls": TLSSettings, "auth": AuthSettings,
    "access": AccessSettings, "program": ProgramSettings, "pop3": Pop3Settings,
    "imap": ImapSettings, "dkim": DkimSettings, "srs": SrsSettings, "antispam": AntispamSettings,
}
# Allowed ranges of every whole-number setting (the GUI shows them next to its fields).
RANGES: dict[str, tuple[int, int]] = {
    "incoming.max_connections": (10, 100), "incoming.max_per_host": (1, 10),
    "outgoing.max_connections": (1, 20), "outgoing.mx_port": (1, 65535),
    "max_message_size_mb": (1, 2000), "smarthost.port": (1, 65535),
    "timeouts.command_seconds": (10, 3600), "timeouts.session_seconds": (60, 86400),
    "timeouts.min_data_rate": (0, 1_000_000),
    "auth.ban_after_failures": (1, 100), "auth.ban_window_minutes": (1, 1440),
    "auth.ban_minutes": (1, 10080),
    "retry.first_seconds": (1, 86400), "retry.max_interval_seconds": (1, 86400),
    "retry.lifetime_hours": (1, 720), "retry.warn_hours": (0, 720),
    "pop3.max_connections": (10, 100), "pop3.max_per_host": (1, 10),
    "imap.max_connections": (10, 100), "imap.max_per_host": (1, 10),
    "dkim.key_bits": (1024, 4096), "srs.max_age_days": (1, 365),
    "antispam.connection_rate": (0, 100_000), "antispam.greeting_pause_ms": (0, 30_000),
    "antispam.tls_handshake_seconds": (1, 600), "antispam.greylist_delay_seconds": (1, 86_400),
    "antispam.max_unknown_recipients": (1, 1000),
}
_BOOLS = ("smarthost.enabled", "smarthost.exclusive", "smarthost.authenticate",
          "smarthost.verify_certificate", "auth.allow_plaintext", "auth.require_for_relay",
          "auth.enforce_sender", "program.start_server_on_open", "pop3.enabled",
          "pop3.allow_plaintext", "imap.enabled", "imap.allow_plaintext", "tls.self_signed",
          "dkim.enabled", "dkim.auto_keys", "srs.enabled", "antispam.greylisting",
          "outgoing.delivery_process")


@dataclass
class Settings:
    server_name: str = field(default_factory=default_server_name)
    primary_domain: str = "localhost"
    additional_domains: list[str] = field(default_factory=list)
    listen: list[str] = field(default_factory=lambda: ["0.0.0.0:25"])
    incoming: IncomingSettings = field(default_factory=IncomingSettings)
    outgoing: OutgoingSettings = field(default_factory=OutgoingSettings)
    max_message_size_mb: int = 50
    trusted_networks: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    smarthost: SmartHostSettings = field(default_factory=SmartHostSettings)
    timeouts: TimeoutSettings = field(default_factory=TimeoutSettings)
    dns_servers: list[str] = field(default_factory=list)
    retry: RetrySettings = field(default_factory=RetrySettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    program: ProgramSettings = field(default_factory=ProgramSettings)
    pop3: Pop3Settings = field(default_factory=Pop3Settings)
    imap: ImapSettings = field(default_factory=ImapSettings)
    dkim: DkimSettings = field(default_factory=DkimSettings)
    srs: SrsSettings = field(default_factory=SrsSettings)
    antispam: AntispamSettings = field(default_factory=AntispamSettings)
    extra: dict = field(default_factory=dict)

    def local_domains(self) -> frozenset[str]:
        return frozenset(d.lower() for d in [self.primary_domain, *self.additional_domains])

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower() in self.local_domains()

    def listen_addresses(self) -> list[tuple[str, int]]:
        """[("0.0.0.0", 25), ("::", 2525)]; raises ValueError on an entry validate() would refuse."""
        return [(e.host, e.port) for e in self.listen_entries()]

    def listen_entries(self) -> list[ListenEntry]:
        return [parse_listen(entry) for entry in self.listen]

    def trusted_network_objects(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.trusted_networks]

    def is_trusted(self, ip: str) -> bool:
        return ip_in_networks(ip, self.trusted_network_objects())

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_size_mb * 1024 * 1024


def ip_in_networks(ip: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Is ``ip`` in one of ``networks``?  Garbage is in none.

    A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; they must match IPv4 rules.
    """
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    candidates = (addr,) if mapped is None else (addr, mapped)
    return any(a.version == net.version and a in net for net in networks for a in candidates)


@dataclass
class FieldError:
    key: str      # dotted setting name ("listen" for every listen[i] entry); "" for whole-file problems
    message: str  # a full sentence naming the key, the bad value and what is allowed


class ConfigError(Exception):
    """Settings that cannot be used; ``str()`` gives one line per problem."""

    def __init__(self, errors: list[FieldError], path: Path | None = None, source: str | None = None):
        self.errors = list(errors)
        self.path = Path(path) if path is not None else None
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        prefix = str(self.path) if self.path is not None else self.source
        return "\n".join(f"{prefix}: {e.message}" if prefix else e.message for e in self.errors)


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except ValueError:  # a container that holds itself
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _err(key: str, value: Any, text: str, label: str | None = None) -> FieldError:
    return FieldError(key, f"{label or key} = {_show(value)} {text}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_list(errors: list[FieldError], key: str, value: Any, form: str, check) -> None:
    """Each string item is handed to ``check`` which returns a problem text or None."""
    if not isinstance(value, list):
        errors.append(_err(key, value, f"is not a list ({form})"))
        return
    for i, item in enumerate(value):
        if not isinstance(item, str):
            errors.append(_err(key, item, f"is not a string ({form})", f"{key}[{i}]"))
        elif (problem := check(item)) is not None:
            errors.append(_err(key, item, f"is not valid: {problem} ({form})", f"{key}[{i}]"))


def _reason(parse, *args: Any) -> str | None:
    """The ValueError text ``parse`` raises for ``args``, or None when it accepts them."""
    try:
        parse(*args)
    except ValueError as exc:
        return str(exc)
    return None


def _check_listen(errors: list[FieldError], key: str, value: Any, settings: Settings, form: str,
                  submission: bool = True) -> set[tuple[str, int]]:
    """Check one protocol's listening addresses; returns the (host, port) pairs that parse."""
    _check_list(errors, key, value, form, lambda t: _reason(parse_listen, t))
    if not isinstance(value, list):
        return set()
    entries = [parse_listen(t) for t in value if _reason(parse_listen, t) is None]
    pairs = [(e.host, e.port) for e in entries]
    if len(pairs) != len(set(pairs)):
        errors.append(_err(key, value, "lists one address and port twice"))
    if any(e.tls for e in entries) and not settings.tls.certificate and settings.tls.self_signed is False:
        errors.append(_err(key, value, 'has a "tls" listener, which needs tls.certificate and '
                           "tls.key, or tls.self_signed true (a certificate ISMail makes itself)"))
    if not submission and any(e.submission for e in entries):
        errors.append(_err(key, value, 'has the "submission" flag, which only SMTP knows '
                           '(allowed here: "tls")'))
    if value == []:
        errors.append(_err(key, [], f"is not valid: at least one address is needed ({form})"))
    return set(pairs)


def validate(settings: Settings) -> list[FieldError]:
    """Every problem in ``settings``, in table order; [] when they can be used as they are."""
    errors: list[FieldError] = []

    def host(key: str, value: Any, allow_ip: bool = False) -> None:
        if not isinstance(value, str):
            errors.append(_err(key, value, f"is not a string ({_HOST_FORM})"))
            return
        if allow_ip and value:
            try:
                ipaddress.ip_address(value)
                return
            except ValueError:
                pass
        problem = host_name_problem(value)
        if problem:
            errors.append(_err(key, value, f"is not a valid {'host name' if allow_ip else 'domain name'}: "
                                           f"{problem} ({_HOST_FORM})"))

    host("server_name", settings.server_name)
    host("primary_domain", settings.primary_domain)
    doms = settings.additional_domains
    _check_list(errors, "additional_domains", doms, _HOST_FORM, host_name_problem)
    if isinstance(doms, list):
        primary = settings.primary_domain.lower() if isinstance(settings.primary_domain, str) else None
        seen: set[str] = set()
        for i, d in enumerate(doms):
            if not isinstance(d, str):
                continue
            label = f"additional_domains[{i}]"
            if d.lower() == primary:
                errors.append(_err("additional_domains", d, "is the primary domain already "
                                   "(each domain may be listed only once)", label))
            elif d.lower() in seen:
                errors.append(_err("additional_domains", d, "is listed twice "
                                   "(each domain may be listed only once)", label))
            seen.add(d.lower())
    smtp_pairs = _check_listen(errors, "listen", settings.listen, settings, _LISTEN_FORM)
    taken = {pair: "SMTP listens on already (listen)" for pair in smtp_pairs}
    for name, section, form in (("pop3", settings.pop3, _POP3_LISTEN_FORM),
                                ("imap", settings.imap, _IMAP_LISTEN_FORM)):
        if section.enabled is not True and isinstance(section.listen, list):
            continue
        key = f"{name}.listen"
        pairs = _check_listen(errors, key, section.listen, settings, form, submission=False)
        for pair in sorted(pairs):
            if pair in taken:
                errors.append(_err(key, section.listen, f"uses {pair[0]}:{pair[1]}, which "
                                   f"{taken[pair]}; choose another port"))
            taken[pair] = f"{name.upper()} listens on already ({key})"

    def value_of(key: str) -> Any:
        section, _, attr = key.rpartition(".")
        return getattr(getattr(settings, section), attr) if section else getattr(settings, attr)

    for key, (lo, hi) in RANGES.items():
        value = value_of(key)
        if not _is_int(value):
            errors.append(_err(key, value, f"is not a whole number (expected an integer {lo}–{hi})"))
        elif not lo <= value <= hi:
            errors.append(_err(key, value, f"is out of range (allowed {lo}–{hi})"))

    _check_list(errors, "trusted_networks", settings.trusted_networks,
                'expected networks such as "192.168.0.0/16" or "fe80::/10"',
                lambda t: _reason(ipaddress.ip_network, t, False))
    sh = settings.smarthost
    for key in _BOOLS:
        if not isinstance(value_of(key), bool):
            errors.append(_err(key, value_of(key), "is not true or false (expected a boolean)"))
    if sh.enabled is True and sh.host == "":
        errors.append(_err("smarthost.host", "", "is not valid: a SmartHost is required when "
                           "smarthost.enabled is true (expected a host name or IP address)"))
    elif sh.host != "":
        host("smarthost.host", sh.host, allow_ip=True)
    if isinstance(sh.spf_include, str) and sh.spf_include:
        host("smarthost.spf_include", sh.spf_include)
    for key in ("smarthost.account", "smarthost.password", "smarthost.spf_include"):
        if not isinstance(value_of(key), str):
            errors.append(_err(key, value_of(key), "is not a string (expected text)"))
    if sh.authenticate is True and sh.account == "":
        errors.append(_err("smarthost.account", "", "is not valid: an account name is required "
                           "when smarthost.authenticate is true"))
    if not isinstance(sh.tls, str) or sh.tls not in TLS_MODES:
        errors.append(_err("smarthost.tls", sh.tls, "is not valid (expected one of "
                           + ", ".join(f'"{m}"' for m in TLS_MODES) + ")"))
    for key in ("tls.certificate", "tls.key"):
        if not isinstance(value_of(key), str):
            errors.append(_err(key, value_of(key), "is not a string (expected the path of a PEM file)"))
    if bool(settings.tls.certificate) != bool(settings.tls.key):
        errors.append(_err("tls.key" if settings.tls.certificate else "tls.certificate", "",
                           "is not valid: tls.certificate and tls.key go together (PEM files)"))
    _check_list(errors, "access.blocked", settings.access.blocked,
                'expected networks such as "203.0.113.0/24" or "2001:db8::/32"',
                lambda t: _reason(ipaddress.ip_network, t, False))
    _check_list(errors, "dns_servers", settings.dns_servers, _DNS_FORM,
                lambda t: _reason(split_host_port, t, False))
    _check_list(errors, "outgoing.require_tls_domains", settings.outgoing.require_tls_domains,
                _HOST_FORM, host_name_problem)
    from .queue.etrn import FORM as ETRN_FORM, parse_host  # it imports this module
    _check_list(errors, "outgoing.etrn_hosts", settings.outgoing.etrn_hosts, ETRN_FORM,
                lambda t: _reason(parse_host, t))
    selector = settings.dkim.selector
    if not isinstance(selector, str):
        errors.append(_err("dkim.selector", selector, "is not a string (expected a name such as "
                           '"ismail2026", or "" for the default)'))
    elif selector and not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", selector):
        errors.append(_err("dkim.selector", selector, "is not valid: letters, digits and inner "
                           'hyphens, at most 63 (expected a name such as "ismail2026")'))
    _check_antispam(errors, settings)
    if not isinstance(settings.extra, dict):
        errors.append(_err("extra", settings.extra, "is not a dict of unknown settings"))
    return errors


def _check_antispam(errors: list[FieldError], settings: Settings) -> None:
    from .antispam.lists import check_entry  # the anti-spam modules import no settings
    from .antispam.rules import check_rule
    from .antispam.dnsbl import check_zone
    spam = settings.antispam
    for key in ("rdns", "dnsbl_action", "spf", "dkim", "dmarc"):
        value = getattr(spam, key)
        if not isinstance(value, str) or value not in ACTIONS:
            errors.append(_err(f"antispam.{key}", value, "is not valid (expected one of "
                               + ", ".join(f'"{a}"' for a in ACTIONS) + ")"))
    _check_list(errors, "antispam.dnsbl", spam.dnsbl, 'expected zones such as "zen.spamhaus.org" '
                'or "zen.spamhaus.org=127.0.0.2-127.0.0.11"', check_zone)
    for key in ("access.whitelist", "access.blacklist"):
        _check_list(errors, key, getattr(settings.access, key.partition(".")[2]),
                    'expected networks ("192.0.2.0/24"), addresses ("bob@example.com") or '
                    'domains ("example.com", "*@example.com", "*.example.com")', check_entry)
    if not isinstance(spam.rules, list):
        errors.append(_err("antispam.rules", spam.rules, "is not a list of content rules"))
        return
    for i, rule in enumerate(spam.rules):
        problem = check_rule(rule) if isinstance(rule, dict) else "is not an object {...}"
        if problem:
            errors.append(FieldError("antispam.rules", f"antispam.rules[{i}]: {problem}"))


def from_dict(data: dict, source: str = SETTINGS_FILE) -> tuple[Settings, list[str]]:
    """Validated Settings and warnings from parsed JSON; ConfigError lists every problem found."""
    if not isinstance(data, dict):
        raise ConfigError([FieldError("", f"must hold a JSON object ({{...}}), not {_show(data)}")],
                          source=source)
    data = copy.deepcopy(data)  # the caller's dict must not end up shared with Settings
    known = {f.name for f in fields(Settings)} - {"extra"}
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    warnings: list[str] = []
    errors: list[FieldError] = []
    for key, value in data.items():
        if key not in known:
            # A newer ISMail may have written it; keep it so saving here does not lose it.
            warnings.append(f"{source}: unknown setting {key!r} ignored")
            extra[key] = value
            continue
        cls = _SECTIONS.get(key)
        if cls is None:
            kwargs[key] = value
            continue
        names = [f.name for f in fields(cls)]
        if not isinstance(value, dict):
            errors.append(_err(key, value, "is not valid: expected an object {...} with the keys "
                               + ", ".join(names)))
            continue
        for sub in value:
            if sub not in names:
                warnings.append(f"{source}: unknown setting {key + '.' + str(sub)!r} ignored")
        kwargs[key] = cls(**{k: v for k, v in value.items() if k in names})
    settings = Settings(**kwargs, extra=extra)
    errors += validate(settings)
    if errors:
        raise ConfigError(errors, source=source)
    settings.primary_domain = settings.primary_domain.lower()
    settings.additional_domains = [d.lower() for d in settings.additional_domains]
    return settings, warnings


def to_dict(settings: Settings) -> dict:
    """JSON-ready dict: sections as nested dicts, unknown keys from ``extra`` at the top level."""
    out = copy.deepcopy(settings.extra) if isinstance(settings.extra, dict) else {}
    known = asdict(settings)
    del known["extra"]
    out.update(known)  # a known key always wins over a stray copy in extra
    return out


def redacted(settings: Settings) -> dict:
    """to_dict() safe to print: a non-empty SmartHost password becomes "********"."""
    out = to_dict(settings)
    if out["smarthost"].get("password"):
        out["smarthost"]["password"] = "********"
    return out


def default_data_dir(environ: Mapping[str, str] = os.environ, platform: str = sys.platform) -> Path:
    """$ISMAIL_HOME, else %APPDATA%\\ISMail on Windows, else $XDG_DATA_HOME/ismail (~/.local/share)."""
    home = environ.get("ISMAIL_HOME", "")
    if home:
        return Path(home)
    if platform == "win32":
        appdata = environ.get("APPDATA", "")
        return Path(appdata) / "ISMail" if appdata else Path.home() / "AppData" / "Roaming" / "ISMail"
    xdg = environ.get("XDG_DATA_HOME", "")
    if xdg:
        return Path(xdg) / "ismail"
    return Path.home() / ".local" / "share" / "ismail"


def resolve_data_dir(cli_value: str | None, environ: Mapping[str, str] = os.environ,
                     platform: str = sys.platform) -> Path:
    """--data-dir wins over everything else; then a portable copy's own folder (portable.txt
    beside the .exe: whoever put it there wants this copy's data to travel with it)."""
    if cli_value:
        return Path(cli_value)
    return portable_data_dir() or default_data_dir(environ, platform)


def settings_path(data_dir: Path) -> Path:
    return Path(data_dir) / SETTINGS_FILE


def load(path: Path) -> tuple[Settings, list[str]]:
    """Settings from ``path`` (defaults if it does not exist) and warnings; never writes the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # Notepad may have added a byte-order mark
    except FileNotFoundError:
        log.info("%s not found; using default settings", path)
        return Settings(), []
    except UnicodeDecodeError as exc:
        raise ConfigError([FieldError("", f"is not UTF-8 text (bad byte at offset {exc.start})")],
                          path=path) from None
    except OSError as exc:
        raise ConfigError([FieldError("", f"cannot be read: {exc.strerror or exc}")], path=path) from None
    duplicates: list[str] = []

    def keep_last(pairs: list[tuple[str, Any]]) -> dict:
        obj: dict = {}
        for k, v in pairs:
            if k in obj:
                duplicates.append(k)
            obj[k] = v
        return obj

    try:
        data = json.loads(text, object_pairs_hook=keep_last)
    except json.JSONDecodeError as exc:
        raise ConfigError([FieldError("", f"is not valid JSON: {exc.msg} at line {exc.lineno}, "
                                          f"column {exc.colno}")], path=path) from None
    smarthost = data.get("smarthost") if isinstance(data, dict) else None
    if isinstance(smarthost, dict) and isinstance(smarthost.get("password"), str):
        try:
            smarthost["password"] = unprotect(smarthost["password"])
        except ProtectError as exc:
            raise ConfigError([FieldError("smarthost.password", f"smarthost.password {exc}")],
                              path=path) from None
    try:
        settings, warnings = from_dict(data, source=str(path))
    except ConfigError as exc:
        exc.path = path
        raise
    warnings += [f"{path}: setting {k!r} appears more than once; the last value is used" for k in duplicates]
    log.info("loaded settings from %s", path)
    return settings, warnings


def save(settings: Settings, path: Path) -> None:
    """Validate, then atomically replace ``path``; on any problem the old file is left as it was."""
    path = Path(path)
    errors = validate(settings)
    if errors:
        raise ConfigError(errors, path=path)
    data = to_dict(settings)
    if data["smarthost"].get("password"):
        data["smarthost"]["password"] = protect(data["smarthost"]["password"])  # DPAPI on Windows
    try:
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    except (TypeError, ValueError) as exc:  # only extra can hold something JSON cannot express
        raise ConfigError([FieldError("extra", f"extra cannot be written as JSON: {exc}")],
                          path=path) from None
    # Owner-only permissions: the file may hold the SmartHost password.
    atomic_write(path, text.encode("utf-8"), mode=0o600)
    log.info("saved settings to %s", path)
