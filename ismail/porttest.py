"""Is port 25 open from here?  The manual's "telnet instantservers.com 25", built in.

Many Internet providers block outgoing port 25, and a mail server that cannot reach
other servers on it can only send through a SmartHost.  ``check_port`` opens one TCP
connection, waits for the SMTP greeting and says in plain words what happened:

* a greeting came: the port is open (the banner is shown);
* the connection was refused: the host is reachable but nothing listens there;
* the connection timed out: something drops the packets - on port 25 that is almost
  always the provider or a firewall, so a SmartHost on port 587 is the way out;
* the connection opened but no greeting came: the same, seen through a filter
  (antivirus or provider proxy) that accepts the connection and then sits on it;
* the name was not found.

``test_smarthost`` walks the conversation ISMail has with its SmartHost - connect,
EHLO, STARTTLS, AUTH - and reports each step; it ends with QUIT and sends no mail.
Both run without Tk and may take as long as their timeout: the GUI runs them in a
thread, the command line (``python3 -m ismail check-port``) in the foreground.
"""
from __future__ import annotations

import errno
import ipaddress
import smtplib
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .config import SmartHostSettings
from .net.sockets import client_tls_context

if TYPE_CHECKING:
    from .queue.dns import Resolver

MAX_GREETING = 4096  # a greeting longer than this is not an SMTP server worth reading further


@dataclass
class PortCheck:
    host: str
    port: int
    ok: bool          # True when an SMTP greeting was received
    banner: str       # the greeting as received ("" without one)
    diagnosis: str    # one or two sentences for a person
    address: str = ""  # the IP address that answered (or was tried last)
    seconds: float = 0.0


@dataclass
class Step:
    name: str    # "Connect", "EHLO", "STARTTLS", "AUTH"
    ok: bool
    detail: str


def _advice(port: int) -> str:
    if port == 25:
        return ("Port 25 is probably blocked by your Internet provider or a firewall; "
                "consider sending through a SmartHost on port 587.")
    return f"Port {port} is probably blocked by a firewall, or the server is down."


def _lookup_problem(host: str, e: socket.gaierror) -> str:
    missing = {getattr(socket, n, None) for n in ("EAI_NONAME", "EAI_NODATA")} - {None}
    if e.errno in missing or getattr(e, "winerror", None) == 11001:  # WSAHOST_NOT_FOUND
        return f"Name not found: {host} does not exist in DNS. Check the spelling."
    return (f"Could not look up {host}: {e.strerror or e}. "
            "Check the Internet connection and the DNS settings.")


def _connect_problem(host: str, port: int, address: str, e: OSError, timeout: float) -> str:
    where = f"{host} port {port}" if host == address else f"{host} ({address}) port {port}"
    if isinstance(e, ConnectionRefusedError):
        return (f"Connection refused: {where} is reachable, but nothing accepts connections "
                "on that port (or a firewall rejects them).")
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"Timed out: no answer from {where} within {timeout:g} seconds. {_advice(port)}"
    if e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return (f"Cannot reach {where}: {e.strerror}. Check the Internet connection "
                "(this computer has no route to that address).")
    return f"Could not connect to {where}: {e.strerror or e}."


def _read_greeting(sock: socket.socket, deadline: float) -> bytes:
    """Read until the last line of a (possibly multi-line) reply; raises socket.timeout."""
    data = b""
    while len(data) < MAX_GREETING:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        sock.settimeout(left)
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
        lines = data.split(b"\r\n") if b"\r\n" in data else data.split(b"\n")
        complete = lines[:-1]
        if complete and (len(complete[-1]) < 4 or complete[-1][3:4] != b"-"):
            break
    return data


def check_port(host: str, port: int = 25, timeout: float = 10.0) -> PortCheck:
    """Connect to ``host``:``port`` and wait for the greeting; never raises for network trouble."""
    host = host.strip().strip("[]")
    started = time.monotonic()
    deadline = started + timeout

    def result(ok: bool, diagnosis: str, banner: str = "", address: str = "") -> PortCheck:
        return PortCheck(host, port, ok, banner, diagnosis, address, time.monotonic() - started)

    if not host:
        return result(False, "No host given: type a host name or an IP address.")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return result(False, _lookup_problem(host, e))
    except UnicodeError:
        return result(False, f"{host!r} is not a valid host name.")
    problem, address = "", ""
    for family, kind, proto, _, sockaddr in infos[:4]:
        address = sockaddr[0]
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left)
            try:
                sock.connect(sockaddr)
            except OSError as e:
                problem = _connect_problem(host, port, address, e, timeout)
                continue  # another address of the same name may answer
            return _greeting(sock, host, port, address, deadline, timeout, result)
        finally:
            sock.close()
    return result(False, problem or f"Timed out: no answer from {host} port {port} within "
                                    f"{timeout:g} seconds. {_advice(port)}", address=address)


def _greeting(sock: socket.socket, host: str, port: int, address: str, deadline: float,
              timeout: float, result: Callable[..., PortCheck]) -> PortCheck:
    try:
        data = _read_greeting(sock, deadline)
    except (socket.timeout, TimeoutError):
        return result(False, f"Timed out waiting for the greeting: the connection to {host} "
                             f"port {port} opened, but no welcome line came within {timeout:g} "
                             "seconds. Something in between (the Internet provider, a firewall "
                             f"or an antivirus program) probably holds the connection. {_advice(port)}",
                      address=address)
    except OSError as e:
        return result(False, f"The connection to {host} port {port} broke before the greeting: "
                             f"{e.strerror or e}.", address=address)
    banner = data.decode("utf-8", "replace").strip()
    if not data:
        return result(False, f"{host} port {port} accepted the connection and closed it without "
                             "a greeting: a filter is probably in the way, or the server is busy.",
                      address=address)
    code = data[:3]
    if not code.isdigit():
        return result(False, f"{host} port {port} answered, but not like a mail server: "
                             f"{banner.splitlines()[0][:80]!r}", banner, address)
    try:
        sock.sendall(b"QUIT\r\n")  # polite; the answer does not matter
    except OSError:
        pass
    if code == b"220":
        return result(True, f"Port {port} is open: {host} greeted ISMail, so mail can be "
                            "delivered directly from this computer.", banner, address)
    return result(True, f"{host} port {port} answered, but refuses service for now "
                        f"({banner.splitlines()[0][:80]}).", banner, address)


def mail_host_for(name: str, resolver: "Resolver | None" = None) -> tuple[str, str]:
    """The host to test for ``name``: its best MX when it is a domain that has one, else itself.

    Returns (host, note); the note says which domain's mail server it is, for the user.
    """
    from .queue.dns import DNSError, Resolver

    name = name.strip().strip("[]").rstrip(".")
    try:
        ipaddress.ip_address(name)
        return name, ""
    except ValueError:
        pass
    try:
        records = (resolver or Resolver()).mx(name)
    except (DNSError, OSError, ValueError):
        return name, ""  # no MX, or DNS unreachable: test the name itself
    hosts = [r.host for r in records if r.host]
    if not hosts:
        return name, ""
    return hosts[0], f"{hosts[0]} is the mail server (MX) of {name}"


def cli_check_port(host: str, port: int) -> int:
    """``python3 -m ismail check-port HOST [PORT]``: one or two lines; 0 when a greeting came."""
    check = check_port(host, port)
    if check.banner and check.ok:
        print(f"{host} port {port}: {check.banner.splitlines()[-1]}")
    print(check.diagnosis)
    sys.stdout.flush()
    return 0 if check.ok else 1


# -- the SmartHost conversation -------------------------------------------------------------------

def _tls_problem(e: ssl.SSLError) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return (f"the server's certificate could not be verified ({e.verify_message}); if the "
                "SmartHost uses a self-signed certificate, turn off \"Verify certificate\".")
    if e.reason == "WRONG_VERSION_NUMBER":  # a plain-text greeting where TLS was expected
        return ("the server does not speak TLS from the start on this port: choose STARTTLS, "
                "or the port for TLS (usually 465).")
    return f"the TLS handshake failed ({e.reason or e})."


def _reply_text(code: int, msg: bytes | str) -> str:
    text = msg.decode("utf-8", "replace") if isinstance(msg, bytes) else msg
    return f"{code} {' '.join(text.split())}"


def test_smarthost(sh: SmartHostSettings, server_name: str, timeout: float = 20.0,
                   on_step: Callable[[Step], None] | None = None) -> list[Step]:
    """Connect, EHLO, STARTTLS (if configured), AUTH (if configured), QUIT; no mail is sent.

    Stops at the first step that fails; ``on_step`` hears of each step as it ends.
    """
    steps: list[Step] = []

    def step(name: str, ok: bool, detail: str) -> bool:
        steps.append(Step(name, ok, detail))
        if on_step is not None:
            on_step(steps[-1])
        return ok

    if not sh.host:
        step("Connect", False, "No SmartHost is set: enter its host name on the Connections page.")
        return steps
    ctx = client_tls_context(sh.verify_certificate)
    where = f"{sh.host} port {sh.port}"
    if sh.tls == "tls":
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(local_hostname=server_name, timeout=timeout, context=ctx)
    else:
        smtp = smtplib.SMTP(local_hostname=server_name, timeout=timeout)
    smtp._host = sh.host  # the name TLS checks the certificate against (smtplib sets it only in __init__)
    try:
        if not _connect(smtp, sh, where, timeout, step):
            return steps
        code, msg = smtp.ehlo()
        if not 200 <= code < 300:
            code, msg = smtp.helo()
            if not step("EHLO", 200 <= code < 300, f"EHLO refused; HELO answered {_reply_text(code, msg)}"):
                return steps
        else:
            offered = " ".join(k.upper() for k in smtp.esmtp_features) or "no extensions"
            step("EHLO", True, f"{code} accepted; the server offers: {offered}")
        if sh.tls in ("starttls", "starttls-optional") and not _starttls(smtp, sh, ctx, step):
            return steps
        if sh.authenticate:
            _auth(smtp, sh, step)
    except smtplib.SMTPServerDisconnected as e:
        step("Connection", False, f"{where} closed the connection: {e}")
    except (smtplib.SMTPException, OSError, ValueError) as e:
        step("Connection", False, f"{where}: {e.strerror if isinstance(e, OSError) and e.strerror else e}")
    finally:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()
    return steps


def _connect(smtp: smtplib.SMTP, sh: SmartHostSettings, where: str, timeout: float,
             step: Callable[[str, bool, str], bool]) -> bool:
    try:
        code, msg = smtp.connect(sh.host, sh.port)
    except socket.gaierror as e:
        return step("Connect", False, _lookup_problem(sh.host, e))
    except ssl.SSLError as e:
        return step("Connect", False, f"Connected to {where}, but {_tls_problem(e)}")
    except smtplib.SMTPServerDisconnected:
        return step("Connect", False, f"{where} closed the connection without a greeting.")
    except OSError as e:
        return step("Connect", False, _connect_problem(sh.host, sh.port, sh.host, e, timeout))
    tls = f" over TLS ({smtp.sock.version()})" if isinstance(smtp.sock, ssl.SSLSocket) else ""
    return step("Connect", code == 220, f"greeting{tls}: {_reply_text(code, msg)}")


def _starttls(smtp: smtplib.SMTP, sh: SmartHostSettings, ctx: ssl.SSLContext,
              step: Callable[[str, bool, str], bool]) -> bool:
    if not smtp.has_extn("starttls"):
        if sh.tls == "starttls-optional":
            return step("STARTTLS", True, "not offered: mail to this SmartHost will go unencrypted "
                                          "(TLS mode starttls-optional allows that).")
        return step("STARTTLS", False, "the server does not offer STARTTLS. Choose TLS mode "
                                       "\"starttls-optional\" or \"none\", or another port.")
    try:
        code, msg = smtp.starttls(context=ctx)
    except ssl.SSLError as e:
        return step("STARTTLS", False, _tls_problem(e)[0].upper() + _tls_problem(e)[1:])
    except smtplib.SMTPResponseException as e:
        return step("STARTTLS", False, f"refused: {_reply_text(e.smtp_code, e.smtp_error)}")
    smtp.ehlo()
    return step("STARTTLS", True, f"encrypted ({smtp.sock.version()}): {_reply_text(code, msg)}")


def _auth(smtp: smtplib.SMTP, sh: SmartHostSettings, step: Callable[[str, bool, str], bool]) -> bool:
    if not smtp.has_extn("auth"):
        hint = "" if isinstance(smtp.sock, ssl.SSLSocket) else \
            " Many servers offer it only over TLS: choose TLS mode starttls or tls."
        return step("AUTH", False, "the server does not offer AUTH (login)." + hint)
    try:
        code, msg = smtp.login(sh.account, sh.password)
    except smtplib.SMTPAuthenticationError as e:
        answer = _reply_text(e.smtp_code, e.smtp_error)
        if 500 <= e.smtp_code < 600:
            return step("AUTH", False, f"the server refused the account name or password: {answer}")
        if 400 <= e.smtp_code < 500:
            return step("AUTH", False, f"the server cannot check the login just now: {answer}")
        return step("AUTH", False, f"the server gave an unexpected answer to the login: {answer}")
    except smtplib.SMTPNotSupportedError:
        return step("AUTH", False, "the server offers no login method ISMail knows "
                                   "(CRAM-MD5, PLAIN or LOGIN).")
    return step("AUTH", True, f"logged in as {sh.account}: {_reply_text(code, msg)}")

