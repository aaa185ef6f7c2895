"""Local accounts and their Maildirs.

Model
-----
* ``DATA/accounts.json`` holds every local account::

      {"version": 1,
       "accounts": {"user@example.test": {"password": "scrypt$16384$8$1$<salt>$<hash>",
                                          "forward": []}}}

  Addresses are stored lowercased.  ``password`` is a salted hash (scrypt, or
  PBKDF2-SHA256 on Python builds without scrypt); the string names its
  algorithm and parameters so old hashes keep verifying if defaults change.
  ``forward`` lists addresses that get a copy of the account's mail.
  ``quota_mb`` (optional; absent or null = no quota) caps the account's Maildir,
  every folder included, in MiB (1-1048576); store/quota.py measures the usage.
  Unknown per-account keys are kept and written back unchanged.
* Each account's mailbox is a Maildir at ``DATA/mailboxes/<domain>/<local>/``.
  Removing an account never deletes its mailbox: mail is only ever deleted by
  a person, not as a side effect of account administration.
* ``postmaster@<d>`` exists in every local domain without being added
  (RFC 5321 requires it); ``root@<d>`` is an alias of it.  Both deliver to the
  postmaster Maildir.  They get an entry in the file only once a password is
  set, so they can log in; ``root``'s password is postmaster's.
* The server keeps one ``AccountStore`` and calls ``mailbox_for`` for every
  RCPT; another process (the CLI) may edit the file meanwhile, which
  ``maybe_reload`` picks up.  A corrupt file is never overwritten or repaired:
  loading raises ``AccountError``; a background reload logs and keeps the old
  accounts.
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..fsutil import atomic_write, file_lock, make_dirs, make_maildirs
from ..platform.memory import map_big_blocks

log = logging.getLogger("ismail.accounts")

RESERVED = ("postmaster", "root")
FORMAT_VERSION = 1
QUOTA_MB_MIN, QUOTA_MB_MAX = 1, 1_048_576   # 1 MiB .. 1 TiB
MB = 1024 * 1024

SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_DKLEN = 2**14, 8, 1, 32
PBKDF2_ITERATIONS = 600_000
VERIFIED_CACHE_SIZE = 10_000
# Some Python builds (OpenSSL without scrypt) lack hashlib.scrypt entirely.
_scrypt = getattr(hashlib, "scrypt", None)

_LOCAL_RE = re.compile(r"[a-z0-9_+\-]+(?:\.[a-z0-9_+\-]+)*")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# Mailboxes are folders and the product runs on Windows, where these names
# (also with any extension, e.g. "con.x") refer to devices, not files.
_WINDOWS_DEVICES = frozenset(
    ["con", "prn", "aux", "nul"] + [f"{p}{i}" for p in ("com", "lpt") for i in range(1, 10)])


class AccountError(Exception):
    """A user-facing problem; str() is one sentence naming the address or file."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _pw_bytes(password: str) -> bytes:
    return password.encode("utf-8", "surrogatepass")  # any str hashes; verify never raises


def hash_password(password: str) -> str:
    """Return a salted hash string that names its algorithm and parameters."""
    salt = secrets.token_bytes(16)
    if _scrypt is not None:
        try:
            map_big_blocks()   # scrypt's 16 MB given back when freed (platform/memory.py)
            digest = _scrypt(_pw_bytes(password), salt=salt, n=SCRYPT_N, r=SCRYPT_R,
                             p=SCRYPT_P, dklen=SCRYPT_DKLEN)
            return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"
        except ValueError:  # e.g. OpenSSL in FIPS mode refuses scrypt
            log.warning("scrypt unavailable at run time; using PBKDF2-SHA256")
    digest = hashlib.pbkdf2_hmac("sha256", _pw_bytes(password), salt, PBKDF2_ITERATIONS)
    return f"pbkdf2_sha256${PBKDF2_ITERATIONS}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """True if password matches stored; False (never an exception) otherwise."""
    try:
        parts = stored.split("$")
        if parts[0] == "scrypt" and len(parts) == 6 and _scrypt is not None:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt, expected = _unb64(parts[4]), _unb64(parts[5])
            # Bounds keep a hand-edited string from exhausting memory/CPU.
            if not (2 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16
                    and 16 <= len(expected) <= 64):
                return False
            map_big_blocks()
            actual = _scrypt(_pw_bytes(password), salt=salt, n=n, r=r, p=p,
                             dklen=len(expected), maxmem=128 * 1024 * 1024)
        elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            iterations = int(parts[1])
            salt, expected = _unb64(parts[2]), _unb64(parts[3])
            if not (1 <= iterations <= 10_000_000 and 16 <= len(expected) <= 64):
                return False
            actual = hashlib.pbkdf2_hmac("sha256", _pw_bytes(password), salt, iterations,
                                         dklen=len(expected))
        else:
            return False
        return hmac.compare_digest(actual, expected)
    except (ValueError, TypeError, AttributeError, binascii.Error, MemoryError):
        return False


@functools.cache
def _dummy_hash() -> str:
    # Unknown users are verified against this so response time does not
    # reveal which addresses exist.
    return hash_password(secrets.token_urlsafe(16))


@dataclass
class AccountInfo:
    address: str
    builtin: bool
    has_password: bool
    mailbox: Path
    forward: list[str] = field(default_factory=list)  # addresses that get a copy
    quota_mb: int | None = None                       # None: no quota


@dataclass
class _Account:
    password: str | None
    forward: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, round-tripped
    quota_mb: int | None = None

    def to_json(self) -> dict[str, Any]:
        doc = {**self.extra, "password": self.password, "forward": list(self.forward)}
        if self.quota_mb is not None:
            doc["quota_mb"] = self.quota_mb
        return doc


def _valid_quota(mb: object) -> bool:
    return type(mb) is int and QUOTA_MB_MIN <= mb <= QUOTA_MB_MAX  # type(): True is no quota


def _split(address: str) -> tuple[str, str]:
    """Lowercase and split; AccountError unless it is a safe local@domain."""
    addr = address.strip().lower()
    local, sep, domain = addr.rpartition("@")
    if not sep or not local or not domain or "@" in local:
        raise AccountError(f"'{address}' is not an address of the form user@domain.")
    if len(domain) > 253 or not _DOMAIN_RE.fullmatch(domain) \
            or domain.split(".")[0] in _WINDOWS_DEVICES:
        raise AccountError(f"'{domain}' in {addr} is not a usable domain name.")
    if len(local) > 64 or not _LOCAL_RE.fullmatch(local):
        raise AccountError(
            f"The user name '{local}' in {addr} is not allowed: use 1-64 characters from "
            "a-z 0-9 . _ + - without a leading, trailing or doubled dot.")
    if local.split(".")[0] in _WINDOWS_DEVICES:
        raise AccountError(
            f"{addr} cannot be used because '{local}' is a reserved device name on Windows "
            "and every mailbox is a folder.")
    return local, domain


def _make_mailbox(addr: str, mailbox: Path) -> None:
    try:
        make_maildirs(mailbox)
    except OSError as e:
        raise AccountError(f"Could not create the mailbox folder {mailbox} for {addr}: "
                           f"{e.strerror or e}.") from e


def _canonical(local: str, domain: str) -> str:
    # root is an alias of postmaster: same mailbox, same password entry.
    return f"{'postmaster' if local == 'root' else local}@{domain}"


class AccountStore:
    """accounts.json plus the Maildir tree; safe to share between threads."""

    def __init__(self, data_dir: Path, *, reload_interval: float = 1.0) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / "accounts.json"
        self.mailbox_root = self.data_dir / "mailboxes"
        self.reload_interval = reload_interval
        # Readers grab this reference and never see it mutated: writers build
        # a new dict and swap it in under _lock.
        self._accounts: dict[str, _Account] = {}
        self._lock = threading.Lock()
        self._loaded = False
        self._signature: tuple[int, int, int] | None = None
        self._next_check = 0.0
        # address -> (its stored hash when verified, HMAC of the password): see verified_before
        self._verified: dict[str, tuple[str, bytes]] = {}
        self._cache_key = secrets.token_bytes(32)
        # (local, domain) -> its Maildir's path (made once: two joins a message otherwise)
        self._boxes: dict[tuple[str, str], Path] = {}

    # ----- reading -----
    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        # st_ino catches os.replace within one mtime tick (coarse on some filesystems).
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> dict[str, _Account]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise AccountError(f"Could not read {self.path}: {e.strerror or e}.") from e
        try:
            doc = json.loads(raw.decode("utf-8"))
        except json.JSONDecodeError as e:
            raise AccountError(f"{self.path} is not valid JSON (line {e.lineno}, "
                               f"column {e.colno}: {e.msg}); fix or restore it.") from e
        except UnicodeDecodeError as e:
            raise AccountError(f"{self.path} is not valid UTF-8 text; fix or restore it.") from e

        def bad(problem: str) -> AccountError:
            return AccountError(f"{self.path} has an unexpected layout ({problem}); "
                                "fix or restore it.")
        if not isinstance(doc, dict):
            raise bad("the top level is not an object")
        version = doc.get("version")
        if type(version) is not int or version != FORMAT_VERSION:  # True == 1, hence type()
            raise bad(f"'version' is {version!r}; this ISMail reads version {FORMAT_VERSION}")
        entries = doc.get("accounts")
        if not isinstance(entries, dict):
            raise bad("'accounts' is not an object")
        accounts: dict[str, _Account] = {}
        for key, value in entries.items():
            try:
                local, domain = _split(key)
            except AccountError as e:
                raise bad(f"account {key!r}: {e}") from None
            if not isinstance(value, dict):
                raise bad(f"account {key!r} is not an object")
            password, forward = value.get("password"), value.get("forward", [])
            if password is not None and not isinstance(password, str):
                raise bad(f"the password of {key!r} is not a string")
            if not isinstance(forward, list) or not all(isinstance(f, str) for f in forward):
                raise bad(f"'forward' of {key!r} is not a list of addresses")
            quota_mb = value.get("quota_mb")
            if quota_mb is not None and not _valid_quota(quota_mb):
                raise bad(f"'quota_mb' of {key!r} is {quota_mb!r}, not a whole number of MB "
                          f"from {QUOTA_MB_MIN} to {QUOTA_MB_MAX}")
            if f"{local}@{domain}" in accounts:
                raise bad(f"{key!r} appears twice")
            extra = {k: v for k, v in value.items() if k not in ("password", "forward", "quota_mb")}
            accounts[f"{local}@{domain}"] = _Account(password, list(forward), extra, quota_mb)
        return accounts

    def load(self) -> None:
        """(Re)read the file; missing file = no accounts; problems raise AccountError."""
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> dict[str, _Account]:
        signature = self._stat()  # before reading, so a racing write is seen next time
        accounts = self._read()
        self._accounts, self._signature, self._loaded = accounts, signature, True
        return accounts

    def maybe_reload(self) -> None:
        """Pick up changes made by another process; at most once per interval."""
        now = time.monotonic()
        if now < self._next_check:
            return
        # Never block the delivery path: if another thread is reloading or
        # saving, keep using the current accounts.
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._next_check = now + self.reload_interval
            signature = self._stat()
            if self._loaded and signature == self._signature:
                return
            try:
                accounts = self._read()
            except AccountError as e:
                # Remember the broken version so the error is logged once per change.
                self._signature, self._loaded = signature, True
                log.error("%s Keeping the %d previously loaded accounts.", e, len(self._accounts))
                return
            self._accounts, self._signature, self._loaded = accounts, signature, True
            log.info("Reloaded %s (%d accounts)", self.path, len(accounts))
        finally:
            self._lock.release()

    # ----- writing -----
    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One writer at a time, in this process (threads) and across processes (the window's
        server and the command line): each re-reads the file under both locks, so no edit
        made elsewhere a moment ago is overwritten."""
        with self._lock:
            try:
                make_dirs(self.data_dir)
            except OSError as e:
                raise AccountError(f"Could not create the data folder {self.data_dir}: "
                                   f"{e.strerror or e}.") from e
            with file_lock(self.data_dir / "accounts.json.lock", "the accounts file", AccountError):
                yield

    def _save_locked(self, accounts: dict[str, _Account]) -> None:
        doc = {"version": FORMAT_VERSION,
               "accounts": {a: accounts[a].to_json() for a in sorted(accounts)}}
        data = (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        for attempt in range(10):
            try:  # temp file, flush, fsync, os.replace, fsync dir (POSIX); 0o600
                atomic_write(self.path, data, mode=0o600)
                break
            except PermissionError as e:
                # Windows refuses to replace a file another process has open
                # (e.g. the server reloading it); that is brief, so retry.
                if os.name != "nt" or attempt == 9:
                    raise AccountError(f"Could not save {self.path}: {e.strerror or e}.") from e
                time.sleep(0.05)
            except OSError as e:
                raise AccountError(f"Could not save {self.path}: {e.strerror or e}.") from e
        self._accounts, self._signature = accounts, self._stat()

    def _mailbox(self, local: str, domain: str) -> Path:
        return self.mailbox_root / domain / ("postmaster" if local in RESERVED else local)

    def add(self, address: str, password: str, local_domains: Iterable[str]) -> AccountInfo:
        local, domain = _split(address)
        addr = f"{local}@{domain}"
        domains = list(dict.fromkeys(d.strip().lower().rstrip(".") for d in local_domains))
        if domain not in domains:
            raise AccountError(f"{domain} is not one of ISMail's domains ({', '.join(domains)}); "
                               "add it to additional_domains first.")
        if local in RESERVED:
            raise AccountError(f"{addr} is built in; set its password instead of adding it.")
        if not password:
            raise AccountError(f"The password for {addr} is empty; choose a non-empty one.")
        hashed = hash_password(password)  # slow; done outside the lock
        mailbox = self._mailbox(local, domain)
        with self._writing():
            # Always re-read: another process may have changed the file, and a
            # corrupt file raises here, before anything could overwrite it.
            accounts = dict(self._load_locked())
            if addr in accounts:
                raise AccountError(f"{addr} already exists.")
            _make_mailbox(addr, mailbox)
            accounts[addr] = _Account(hashed)
            self._save_locked(accounts)
        log.info("Added account %s (mailbox %s)", addr, mailbox)
        return AccountInfo(addr, False, True, mailbox)

    def remove(self, address: str) -> None:
        """Delete the account; its mailbox folder and mail are kept."""
        local, domain = _split(address)
        addr = f"{local}@{domain}"
        if local in RESERVED:
            raise AccountError(f"{addr} cannot be removed: postmaster and root are built in.")
        with self._writing():
            accounts = dict(self._load_locked())
            if accounts.pop(addr, None) is None:
                raise AccountError(f"There is no account {addr}.")
            self._save_locked(accounts)
        log.info("Removed account %s; its mailbox %s was kept", addr,
                 self._mailbox(local, domain))

    def set_password(self, address: str, password: str) -> None:
        local, domain = _split(address)
        addr = _canonical(local, domain)
        if not password:
            raise AccountError(f"The password for {addr} is empty; choose a non-empty one.")
        hashed = hash_password(password)
        with self._writing():
            accounts = dict(self._load_locked())
            old = accounts.get(addr)
            if old is None and local not in RESERVED:
                raise AccountError(f"There is no account {addr}; add it first.")
            if local in RESERVED:  # so a first login finds a mailbox to open
                _make_mailbox(addr, self._mailbox(local, domain))
            accounts[addr] = replace(old, password=hashed) if old else _Account(hashed)
            self._save_locked(accounts)
        log.info("Changed the password of %s", addr)

    def set_forward(self, address: str, targets: Iterable[str]) -> None:
        """Send a copy of every message for ``address`` to ``targets`` too ([] stops it)."""
        local, domain = _split(address)
        addr = _canonical(local, domain)
        clean = []
        for target in targets:
            target = target.strip()
            t_local, at, t_domain = target.rpartition("@")
            if not at or not t_local or not _DOMAIN_RE.fullmatch(t_domain.lower()) or " " in target:
                raise AccountError(f"{target!r} is not an e-mail address (forwarding of {addr}).")
            if target.lower() == addr:
                raise AccountError(f"{addr} cannot forward to itself.")
            if target.lower() not in (c.lower() for c in clean):
                clean.append(target)
        with self._writing():
            accounts = dict(self._load_locked())
            old = accounts.get(addr)
            if old is None and local not in RESERVED:
                raise AccountError(f"There is no account {addr}; add it first.")
            accounts[addr] = replace(old, forward=clean) if old else _Account(None, clean)
            self._save_locked(accounts)
        log.info("Forwarding of %s set to %s", addr, ", ".join(clean) or "nobody")

    def set_quota(self, address: str, mb: int | None) -> None:
        """Cap the account's Maildir (all folders) at ``mb`` MiB; None removes the cap."""
        local, domain = _split(address)
        addr = _canonical(local, domain)
        if mb is not None and not _valid_quota(mb):
            raise AccountError(f"quota_mb of {addr} must be a whole number of MB from "
                               f"{QUOTA_MB_MIN} to {QUOTA_MB_MAX}, or none; {mb!r} is not.")
        with self._writing():
            accounts = dict(self._load_locked())
            old = accounts.get(addr)
            if old is None and local not in RESERVED:
                raise AccountError(f"There is no account {addr}; add it first.")
            accounts[addr] = replace(old, quota_mb=mb) if old else _Account(None, quota_mb=mb)
            self._save_locked(accounts)
        log.info("Quota of %s set to %s", addr, f"{mb} MB" if mb is not None else "none")

    def quota_for(self, local: str, domain: str) -> int | None:
        """The quota of a local recipient in bytes, or None (no quota, or no such account).
        Called for every RCPT, so it is one dict lookup; root shares postmaster's."""
        self.maybe_reload()
        local, domain = local.lower(), domain.lower()
        acc = self._accounts.get(_canonical(local, domain))
        if acc is None or acc.quota_mb is None:
            return None
        return acc.quota_mb * MB

    def forwards_for(self, local: str, domain: str) -> list[str]:
        """Where copies of a local recipient's mail go (root shares postmaster's)."""
        local, domain = local.lower(), domain.lower()
        if local == "root":
            local = "postmaster"
        acc = self._accounts.get(f"{local}@{domain}")
        return acc.forward if acc is not None else []

    # ----- queries -----
    def list(self, local_domains: Iterable[str]) -> list[AccountInfo]:
        """All accounts plus postmaster/root of every local domain, by domain then user."""
        self.maybe_reload()
        accounts = self._accounts
        infos: dict[str, AccountInfo] = {}
        for addr, acc in accounts.items():
            local, _, domain = addr.rpartition("@")
            infos[addr] = AccountInfo(addr, local in RESERVED, bool(acc.password),
                                      self._mailbox(local, domain), list(acc.forward),
                                      acc.quota_mb)
        for d in local_domains:
            domain = d.strip().lower().rstrip(".")
            pm = accounts.get(f"postmaster@{domain}")
            for local in RESERVED:
                infos.setdefault(f"{local}@{domain}", AccountInfo(
                    f"{local}@{domain}", True, bool(pm and pm.password),
                    self._mailbox(local, domain), quota_mb=pm.quota_mb if pm else None))
        def by_domain(info: AccountInfo) -> tuple[str, str]:
            local, _, domain = info.address.rpartition("@")
            return (domain, local)
        return sorted(infos.values(), key=by_domain)

    def mailbox_for(self, local: str, domain: str) -> Path | None:
        """Maildir for a recipient in a local domain, or None if no such user."""
        self.maybe_reload()
        local, domain = local.lower(), domain.lower()
        if local in RESERVED:
            return self._mailbox(local, domain) if _DOMAIN_RE.fullmatch(domain) else None
        if f"{local}@{domain}" in self._accounts:
            box = self._boxes.get((local, domain))
            if box is None:
                if len(self._boxes) >= 4096:
                    self._boxes.clear()
                box = self._boxes[(local, domain)] = self.mailbox_root / domain / local
            return box
        return None

    def check_password(self, address: str, password: str) -> bool:
        self.maybe_reload()
        local, _, domain = address.strip().lower().rpartition("@")
        acc = self._accounts.get(_canonical(local, domain))
        if acc is None or not acc.password:
            verify_password(password, _dummy_hash())  # equalise timing
            return False
        if not verify_password(password, acc.password):
            return False
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[_canonical(local, domain)] = (acc.password, self._keyed(password))
        return True

    def verified_before(self, address: str, password: str) -> bool:
        """Did this exact password pass ``check_password`` for this account, since its
        password last changed?  Mail programs log in every few minutes, IMAP clients with
        several connections at once: this spares them a 50 ms scrypt each time (Dovecot's
        auth cache).  Only a keyed hash of a password that was proven right is kept, in
        memory; a wrong password always takes the slow path."""
        self.maybe_reload()
        local, _, domain = address.strip().lower().rpartition("@")
        key = _canonical(local, domain)
        acc = self._accounts.get(key)
        seen = self._verified.get(key)
        if acc is None or seen is None or seen[0] != acc.password:
            return False
        return hmac.compare_digest(seen[1], self._keyed(password))

    def _keyed(self, password: str) -> bytes:
        return hmac.new(self._cache_key, _pw_bytes(password), hashlib.sha256).digest()
