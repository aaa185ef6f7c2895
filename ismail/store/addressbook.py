"""The address book of the local domains: aliases, groups, catch-all and domain aliases.

Model
-----
``DATA/addresses.json`` is one object::

    {"version": 1,
     "aliases": {"sales@example.com": ["ann@example.com", "bob@partner.org"]},
     "groups": {"team@example.com": {"members": ["ann@example.com"], "senders": "members"}},
     "catch_all": {"example.com": "postmaster@example.com"},
     "domain_aliases": {"example.org": "example.com"}}

* Addresses are compared case-insensitively, the local part included: RFC 5321 lets a
  server treat ``Ann`` and ``ann`` as two mailboxes, but to people they are one, and the
  accounts are stored lowercased too.  Keys are stored lowercased; targets are kept as
  typed (a remote server gets the spelling the admin wrote) and compared lowercased.
* Resolution (``expand``): rewrite a domain alias; an account wins; then an alias; then a
  group; then the domain's catch-all; else the address is unknown.  Nested entries are
  expanded, each address once, at most ``MAX_DEPTH`` deep and ``MAX_TARGETS`` addresses.
  A group's ``senders`` rule is checked for the first group on each path (reached directly
  or through aliases, which are only names); a group inside a group is a subscription, so
  the outer group's rule governs it.
* Editing re-reads the file under ``addresses.json.lock`` (another process, the CLI, may
  have changed it), validates the whole new book and saves atomically.  An edit is refused
  if the edited entry has any problem or if the book gains one; problems that other
  changes caused (an account removed under an alias) are listed by ``problems()`` but do
  not block unrelated edits.
* A corrupt file is never overwritten: it is renamed ``addresses.json.corrupt-<stamp>``,
  logged, and the book is empty until it is restored (``load_problem`` says why).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .jsonfile import Corrupt, JsonFile, Published, document
from .addressbook_rules import (FORMAT_VERSION, MAX_DEPTH, MAX_TARGETS, SENDER_MODES, Group, _Book,
                                _clean_targets, _domain, _norm_domains, address_problem, problems_of)

__all__ = ["AddressBook", "AddressError", "Expansion", "Group", "address_problem", "problems_of",
           "FORMAT_VERSION", "MAX_DEPTH", "MAX_TARGETS", "SENDER_MODES"]

log = logging.getLogger("ismail.addressbook")

FILE_NAME = "addresses.json"

class AddressError(ValueError):
    """A refused edit or unusable file; str() names the entry and the conflict."""


class _SetAside(AddressError):
    pass


@dataclass
class Expansion:
    accounts: list[str] = field(default_factory=list)  # local accounts, lowercased, in order
    remote: list[str] = field(default_factory=list)    # remote addresses, as written
    refusal: str = ""                                  # non-empty: refuse the recipient
    known: bool = True                                 # False: 550 User unknown


def _parse(raw: bytes) -> _Book:
    doc = document(raw, FORMAT_VERSION)
    book = _Book()

    def section(name: str) -> dict[str, Any]:
        value = doc.get(name, {})
        if not isinstance(value, dict):
            raise Corrupt(f"'{name}' is not an object")
        lowered = {k.strip().lower(): v for k, v in value.items()}
        if len(lowered) != len(value):
            raise Corrupt(f"'{name}' lists an address twice (differing only in case)")
        return lowered

    def strings(where: str, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise Corrupt(f"{where} is not a list of addresses")
        return list(value)
    for key, value in section("aliases").items():
        book.aliases[key] = strings(f"alias {key!r}", value)
    for key, value in section("groups").items():
        if not isinstance(value, dict) or value.get("senders", "anyone") not in SENDER_MODES:
            raise Corrupt(f"group {key!r} is not an object with 'members' and a known 'senders'")
        book.groups[key] = Group(tuple(strings(f"the members of {key!r}", value.get("members"))),
                                 value.get("senders", "anyone"))
    for name, target in (("catch_all", book.catch_all), ("domain_aliases", book.domain_aliases)):
        for key, value in section(name).items():
            if not isinstance(value, str):
                raise Corrupt(f"'{name}' of {key!r} is not a string")
            target[key] = value.strip().lower() if name == "domain_aliases" else value.strip()
    return book


class AddressBook(Published[_Book]):
    """addresses.json in memory; readers share one published _Book that is never mutated."""

    keeping = "Keeping the address book loaded before."

    def __init__(self, data_dir: Path, *, reload_interval: float = 1.0) -> None:
        super().__init__(JsonFile(
            Path(data_dir) / FILE_NAME, what="the address book", parse=_parse, empty=_Book,
            empty_text="the address book is empty", error=AddressError, set_aside=_SetAside,
            logger=log), reload_interval)

    def describe(self, book: _Book) -> str:
        return f"{len(book.aliases)} aliases, {len(book.groups)} groups"

    def _save(self, book: _Book) -> None:
        self._file.save((json.dumps(book.to_json(), indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        self._publish(book)

    def _edit(self, subject: str, change: Callable[[_Book], None], accounts: set[str] | None,
              local_domains: Iterable[str]) -> None:
        domains = _norm_domains(local_domains)
        with self._mutex, self._file.locked():
            old = self._refresh(locked=True, strict=True)  # another process may have edited
            new = old.copy()
            change(new)
            before = {m for _, m in problems_of(old, accounts, domains)}
            refused = [m for s, m in problems_of(new, accounts, domains)
                       if s == subject or m not in before]
            if refused:
                raise AddressError("; ".join(dict.fromkeys(refused)) + ".")
            self._save(new)

    def _refuse_if_used(self, book: _Book, addr: str) -> None:
        users = sorted(a for a in set(book.aliases) | set(book.groups)
                       if a != addr and addr in (book.rewrite(t) for t in book.targets(a)))
        if users:
            raise AddressError(f"{addr} is a target of {', '.join(users)}; remove it there first.")

    # ----- editing -----
    def set_alias(self, address: str, targets: list[str], *, accounts: set[str],
                  local_domains: set[str]) -> None:
        addr, clean = address.strip().lower(), _clean_targets(targets)
        self._edit(addr, lambda b: b.aliases.__setitem__(addr, clean), accounts, local_domains)
        log.info("Alias %s -> %s", addr, ", ".join(clean))

    def remove_alias(self, address: str) -> None:
        addr = address.strip().lower()

        def change(book: _Book) -> None:
            if book.aliases.pop(addr, None) is None:
                raise AddressError(f"There is no alias {addr}.")
            self._refuse_if_used(book, addr)
        self._edit(addr, change, None, ())
        log.info("Removed alias %s", addr)

    def set_group(self, address: str, members: list[str], senders: str, *, accounts: set[str],
                  local_domains: set[str]) -> None:
        addr, clean = address.strip().lower(), _clean_targets(members)
        if senders not in SENDER_MODES:
            raise AddressError(f"group {addr}: who may send must be one of "
                               f"{', '.join(SENDER_MODES)}, not {senders!r}.")
        self._edit(addr, lambda b: b.groups.__setitem__(addr, Group(tuple(clean), senders)),
                   accounts, local_domains)
        log.info("Group %s (%d members, senders: %s)", addr, len(clean), senders)

    def remove_group(self, address: str) -> None:
        addr = address.strip().lower()

        def change(book: _Book) -> None:
            if book.groups.pop(addr, None) is None:
                raise AddressError(f"There is no group {addr}.")
            self._refuse_if_used(book, addr)
        self._edit(addr, change, None, ())
        log.info("Removed group %s", addr)

    def set_catch_all(self, domain: str, account: str | None, *, accounts: set[str],
                      local_domains: set[str]) -> None:
        """Send unknown recipients of ``domain`` to ``account``; None turns it off."""
        dom = domain.strip().lower().rstrip(".")

        def change(book: _Book) -> None:
            if account is None:
                book.catch_all.pop(dom, None)
            else:
                book.catch_all[dom] = account.strip().lower()
        self._edit(dom, change, accounts, local_domains)
        log.info("Catch-all of %s: %s", dom, account or "off")

    def set_domain_alias(self, alias_domain: str, target_domain: str | None, *,
                         local_domains: set[str], accounts: set[str] | None = None) -> None:
        """``x@alias_domain`` delivers as ``x@target_domain``; None removes the alias.
        With ``accounts``, an alias domain that has accounts of its own is refused too."""
        dom = alias_domain.strip().lower().rstrip(".")

        def change(book: _Book) -> None:
            if target_domain is None:
                if book.domain_aliases.pop(dom, None) is None:
                    raise AddressError(f"There is no domain alias {dom}.")
            else:
                book.domain_aliases[dom] = target_domain.strip().lower().rstrip(".")
        self._edit(dom, change, accounts, local_domains)
        log.info("Domain alias %s -> %s", dom, target_domain or "(removed)")

    # ----- reading -----
    def snapshot(self) -> dict[str, Any]:
        """A copy of the book in the file's layout, for ``list`` commands and the GUI."""
        self.maybe_reload()
        doc = self._value.to_json()
        del doc["version"]
        return doc

    def problems(self, *, accounts: set[str], local_domains: set[str]) -> list[str]:
        """Everything wrong with the stored book now (e.g. an alias whose account was removed)."""
        self.maybe_reload()
        return list(dict.fromkeys(m for _, m in problems_of(self._value, accounts,
                                                             _norm_domains(local_domains))))

    def accepted_domains(self, local_domains: set[str]) -> set[str]:
        """The local domains plus the alias domains that point at one of them."""
        domains = _norm_domains(local_domains)
        self.maybe_reload()
        return domains | {a for a, t in self._value.domain_aliases.items() if t in domains}

    def alias_target(self, domain: str, local_domains: set[str]) -> str | None:
        """The local domain that ``domain`` is an alias of, or None (the hot path of RCPT)."""
        self.maybe_reload()
        target = self._value.domain_aliases.get(domain.lower().rstrip("."))
        return target if target is not None and target in local_domains else None

    def expand(self, address: str, sender: str, *, is_account: Callable[[str], bool],
               local_domains: set[str], sender_is_local: bool) -> Expansion:
        """Where mail for ``address`` goes; see the module docstring for the rules."""
        self.maybe_reload()
        book, domains = self._value, _norm_domains(local_domains)
        start = book.rewrite(address)
        if _domain(start) not in domains:
            return Expansion(remote=[address.strip()])
        if not (is_account(start) or start in book.aliases or start in book.groups
                or _catch_all(book, start, is_account)):
            return Expansion(known=False)
        result = Expansion()
        seen: set[str] = set()
        stack = [(address.strip(), 0, False)]  # (as written, depth, inside a group)
        while stack:
            written, depth, in_group = stack.pop()
            addr = book.rewrite(written)
            if addr in seen:
                continue
            seen.add(addr)
            if depth > MAX_DEPTH:
                log.warning("%s nests deeper than %d levels; refused", start, MAX_DEPTH)
                return Expansion(refusal=f"{start} nests aliases and groups too deeply")
            if _domain(addr) not in domains:
                result.remote.append(written)
            elif is_account(addr):
                result.accounts.append(addr)
            elif addr in book.aliases or addr in book.groups:
                group = book.groups.get(addr)
                if group is not None and not in_group:
                    refusal = _sender_refusal(book, addr, group, sender, sender_is_local)
                    if refusal:
                        return Expansion(refusal=refusal)
                stack += [(t, depth + 1, in_group or group is not None)
                          for t in reversed(book.targets(addr))]
            elif (target := _catch_all(book, addr, is_account)):
                if target not in seen:
                    seen.add(target)
                    result.accounts.append(target)
            else:
                log.warning("%s: %s is not an account, alias or group; skipped", start, addr)
            if len(result.accounts) + len(result.remote) > MAX_TARGETS:
                # Delivering to part of a list would be silent loss; the sender learns instead.
                log.warning("%s expands to more than %d addresses; refused", start, MAX_TARGETS)
                return Expansion(refusal=f"{start} expands to more than {MAX_TARGETS} addresses")
        if not result.accounts and not result.remote:
            result.refusal = f"{start} delivers to no existing address"
        return result


def _catch_all(book: _Book, addr: str, is_account: Callable[[str], bool]) -> str:
    target = book.catch_all.get(_domain(addr), "").lower()
    return target if target and is_account(target) else ""


def _sender_refusal(book: _Book, addr: str, group: Group, sender: str,
                    sender_is_local: bool) -> str:
    if group.senders == "members":
        if not sender or book.rewrite(sender) not in {book.rewrite(m) for m in group.members}:
            return f"only members of {addr} may send to it"
    elif group.senders == "local" and not sender_is_local:
        return f"only senders of this server's domains may send to {addr}"
    return ""
