"""Each local domain's DKIM keys, and the one that signs.

    DATA/dkim/<domain>/<selector>.pem    one private key per selector (PKCS#8 PEM)
    DATA/dkim/<domain>/active            the selector that signs new mail

A key file is protected like the SmartHost password: readable by its owner only
(mode 0600) elsewhere, encrypted for the user by DPAPI on Windows ("dpapi:..."
instead of the PEM; `ismail dkim export` prints the PEM).  A new key becomes the
active one; the keys of older selectors stay (their DNS records must stay valid
until mail signed with them has been delivered) until the user removes them.

A file that cannot be read as a key is reported and left where it is for the user
to look at: that domain's mail goes out unsigned, and nothing is overwritten.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..fsutil import atomic_write, make_dirs
from ..platform.protect import ProtectError, protect, unprotect
from . import rsa
from .dkim import dns_record_value

log = logging.getLogger("ismail.dkim")

ACTIVE_FILE = "active"
_SELECTOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class KeyStoreError(ValueError):
    """A key operation that cannot be done; the message says why, for a person."""


@dataclass
class DomainKey:
    domain: str
    selector: str
    key: rsa.PrivateKey
    active: bool

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def record_value(self) -> str:
        return dns_record_value(self.key.public())


class KeyStore:
    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir) / "dkim"
        self._lock = threading.Lock()
        self._signing: dict[str, tuple[tuple, DomainKey | None]] = {}  # domain -> (stamp, key)
        self._active_paths: dict[str, str] = {}  # domain -> its ACTIVE_FILE's path

    # -- what signing asks, per message: cheap ---------------------------------------------------
    def signing_key(self, domain: str) -> DomainKey | None:
        """The active key of ``domain``, or None (no key, or one that cannot be read)."""
        domain = domain.lower()
        active = self._active_paths.get(domain)
        if active is None:  # a str, made once: os.stat of it 1.3 us, the join and Path.stat 6
            active = self._active_paths[domain] = str(self.dir / domain / ACTIVE_FILE)
        try:
            st = os.stat(active)
            # The file's identity too: a new key replaces the file (atomic_write), and within
            # one tick of a coarse clock the old and the new could share times and size.
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            return None
        cached = self._signing.get(domain)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        with self._lock:
            try:
                found = self._load_active(domain)
            except (OSError, ValueError) as e:
                log.error("DKIM key of %s cannot be used (mail from it goes out unsigned): %s", domain, e)
                found = None
            self._signing[domain] = (stamp, found)
            return found

    # -- managing keys ---------------------------------------------------------------------------
    def keys(self, domain: str) -> list[DomainKey]:
        """Every readable key of ``domain``, the active one first."""
        domain = domain.lower()
        folder = self.dir / domain
        active = self._active_selector(domain)
        out = []
        for path in sorted(folder.glob("*.pem")) if folder.is_dir() else []:
            try:
                key = self._read(path)
            except (OSError, ValueError) as e:
                log.error("DKIM key %s cannot be read: %s", path, e)
                continue
            out.append(DomainKey(domain, path.stem, key, path.stem == active))
        out.sort(key=lambda k: (not k.active, k.selector))
        return out

    def create(self, domain: str, bits: int = 2048, selector: str = "") -> DomainKey:
        """A new key for ``domain`` that signs from now on; older keys are kept."""
        if not 1024 <= bits <= 4096:
            raise KeyStoreError(f"a DKIM key of {bits} bits is not allowed (1024-4096; 2048 recommended)")
        key = rsa.generate(bits)
        return self._store(domain.lower(), key, selector)

    def import_key(self, domain: str, data: bytes, selector: str = "") -> DomainKey:
        """An existing private key (PEM or DER, PKCS#8 or PKCS#1) for ``domain``."""
        try:
            key = rsa.load_private_key(data)
        except ValueError as e:
            raise KeyStoreError(f"cannot import the key: {e}") from None
        if not 1024 <= key.bits <= 4096:
            raise KeyStoreError(f"cannot import the key: it is {key.bits} bits; 1024-4096 allowed")
        return self._store(domain.lower(), key, selector)

    def remove(self, domain: str, selector: str) -> None:
        domain = domain.lower()
        path = self.dir / domain / f"{selector}.pem"
        if not path.exists():
            raise KeyStoreError(f"{domain} has no DKIM key with the selector {selector!r}")
        if self._active_selector(domain) == selector:
            raise KeyStoreError(f"{selector!r} is the key that signs {domain}'s mail; make a new key "
                            "first (the old one stays until you remove it)")
        path.unlink()

    def export_pem(self, domain: str, selector: str) -> bytes:
        return rsa.private_key_to_pem(self._read(self.dir / domain.lower() / f"{selector}.pem"))

    def default_selector(self, domain: str, wanted: str = "") -> str:
        """``wanted``, else "ismail" and the year; a letter is added if that one is taken."""
        base = wanted or f"ismail{time.gmtime().tm_year}"
        if not _SELECTOR.fullmatch(base):
            raise KeyStoreError(f"{base!r} is not a valid selector (letters, digits and inner hyphens)")
        taken = {p.stem for p in (self.dir / domain.lower()).glob("*.pem")}
        if wanted:
            if wanted in taken:
                raise KeyStoreError(f"{domain} has a key with the selector {wanted!r} already")
            return wanted
        if base not in taken:
            return base
        for letter in "bcdefghijklmnopqrstuvwxyz":
            if base + letter not in taken:
                return base + letter
        raise KeyStoreError(f"too many keys for {domain} this year; remove old ones")

    # -- files -----------------------------------------------------------------------------------
    def _store(self, domain: str, key: rsa.PrivateKey, selector: str) -> DomainKey:
        with self._lock:
            selector = self.default_selector(domain, selector)
            folder = self.dir / domain
            make_dirs(folder)
            pem = rsa.private_key_to_pem(key).decode("ascii")
            path = folder / f"{selector}.pem"
            if path.exists():  # never overwrite a key: mail signed with it may still be under way
                raise KeyStoreError(f"{path} exists already")
            atomic_write(path, protect(pem).encode("ascii"), mode=0o600)
            atomic_write(folder / ACTIVE_FILE, (selector + "\n").encode("ascii"))
            self._signing.pop(domain, None)
        log.info("DKIM: new %d-bit key for %s, selector %s", key.bits, domain, selector)
        return DomainKey(domain, selector, key, True)

    def _active_selector(self, domain: str) -> str:
        try:
            return (self.dir / domain / ACTIVE_FILE).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return ""

    def _load_active(self, domain: str) -> DomainKey | None:
        selector = self._active_selector(domain)
        if not selector:
            return None
        if not _SELECTOR.fullmatch(selector):
            raise ValueError(f"{self.dir / domain / ACTIVE_FILE} names no valid selector")
        return DomainKey(domain, selector, self._read(self.dir / domain / f"{selector}.pem"), True)

    @staticmethod
    def _read(path: Path) -> rsa.PrivateKey:
        text = path.read_text(encoding="ascii", errors="replace").strip()
        try:
            text = unprotect(text)
        except ProtectError as e:
            raise ValueError(f"{path} {e}") from None
        return rsa.load_private_key(text.encode("ascii", "replace"))


def keys_missing(store: KeyStore, domains: list[str]) -> list[str]:
    """The domains that have no active key."""
    return [d for d in domains if not (store.dir / d.lower() / ACTIVE_FILE).exists()]
