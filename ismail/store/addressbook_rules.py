"""The address book's data and its rules: what may be saved (``problems_of``) - loops,
shadowed accounts, foreign domains, chained domain aliases, size and depth limits - and
the syntax of an address in it.  ``addressbook`` holds the file, the locking and delivery."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from ..config import host_name_problem
from .accounts import RESERVED

FORMAT_VERSION = 1
SENDER_MODES = ("anyone", "members", "local")
MAX_DEPTH = 10        # nesting of aliases/groups; deeper is refused when saved and delivered
MAX_TARGETS = 1000    # members of one entry, and addresses one expansion may yield

# RFC 5321 Dot-string (quoted local parts are not accepted in the book).
_LOCAL_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*",
                       re.ASCII)


@dataclass(frozen=True)
class Group:
    members: tuple[str, ...]
    senders: str = "anyone"


@dataclass
class _Book:
    aliases: dict[str, list[str]] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    catch_all: dict[str, str] = field(default_factory=dict)
    domain_aliases: dict[str, str] = field(default_factory=dict)

    def copy(self) -> "_Book":
        return _Book(dict(self.aliases), dict(self.groups), dict(self.catch_all),
                     dict(self.domain_aliases))

    def targets(self, addr: str) -> list[str]:
        if addr in self.aliases:
            return self.aliases[addr]
        group = self.groups.get(addr)
        return list(group.members) if group else []

    def rewrite(self, address: str) -> str:
        """Lowercase and apply a domain alias."""
        local, at, domain = address.strip().lower().rpartition("@")
        return f"{local}@{self.domain_aliases.get(domain, domain)}" if at else address.lower()

    def to_json(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION,
                "aliases": {a: list(self.aliases[a]) for a in sorted(self.aliases)},
                "groups": {a: {"members": list(g.members), "senders": g.senders}
                           for a, g in sorted(self.groups.items())},
                "catch_all": dict(sorted(self.catch_all.items())),
                "domain_aliases": dict(sorted(self.domain_aliases.items()))}


def address_problem(address: str) -> str | None:
    """Why ``address`` is not a plain RFC 5321 local@domain, or None."""
    local, at, domain = address.rpartition("@")
    if not at or not local:
        return "is not of the form local@domain"
    if len(address) > 254:
        return "is longer than 254 characters"
    if len(local) > 64 or not _LOCAL_RE.fullmatch(local):
        return ("has a user part that is not 1-64 letters, digits and !#$%&'*+-/=?^_`{|}~ "
                "separated by single dots")
    problem = host_name_problem(domain)
    return f"has an unusable domain: {problem}" if problem else None


def _domain(address: str) -> str:
    return address.rpartition("@")[2]


def _norm_domains(domains: Iterable[str]) -> set[str]:
    return {d.strip().lower().rstrip(".") for d in domains}


def _clean_targets(targets: Iterable[str]) -> list[str]:
    out: dict[str, str] = {}
    for t in (t.strip() for t in targets):
        if t:
            out.setdefault(t.lower(), t)
    return list(out.values())


# ----- validation -----
def problems_of(book: _Book, accounts: set[str] | None,
                local_domains: set[str]) -> list[tuple[str, str]]:
    """(subject, message) for every problem; accounts=None skips the account checks."""
    domains = _norm_domains(local_domains)
    known = None if accounts is None else (
        {a.lower() for a in accounts} | {f"{r}@{d}" for r in RESERVED for d in domains})
    out: list[tuple[str, str]] = []
    for alias, target in sorted(book.domain_aliases.items()):
        subject = f"domain alias {alias} -> {target}"
        for name in (alias, target):
            if (problem := host_name_problem(name)):
                out.append((alias, f"{subject}: {name}: {problem}"))
        if alias == target:
            out.append((alias, f"domain alias {alias} points to itself"))
        elif target not in domains:
            out.append((alias, f"{subject}: {target} is not one of ISMail's domains"))
        elif target in book.domain_aliases:
            out.append((alias, f"{subject} -> {book.domain_aliases[target]} is a chain; "
                               f"point {alias} at {book.domain_aliases[target]} directly"))
        own = sorted(a for a in (known or ()) if _domain(a) == alias
                     and a.rpartition("@")[0] not in RESERVED)
        if own or alias in book.catch_all:
            what = own[0] if own else "a catch-all"
            out.append((alias, f"{subject}: {alias} is a real domain with {what} of its own"))
    entries = [("alias", a, t) for a, t in sorted(book.aliases.items())] + \
              [("group", a, list(g.members)) for a, g in sorted(book.groups.items())]
    for kind, addr, targets in entries:
        out += [(addr, m) for m in _entry_problems(book, kind, addr, targets, known, domains)]
    for dom, target in sorted(book.catch_all.items()):
        subject = f"catch-all of {dom}"
        if dom not in domains:
            out.append((dom, f"{subject}: {dom} is not one of ISMail's domains"))
        if (problem := address_problem(target)):
            out.append((dom, f"{subject}: {target!r} {problem}"))
        elif _domain(target.lower()) not in domains or (known is not None and target.lower() not in known):
            # Any local account may collect a domain's unknown addresses (hMailServer's rule).
            out.append((dom, f"{subject}: {target} is not an account here"))
    out += _graph_problems(book)
    return out


def _entry_problems(book: _Book, kind: str, addr: str, targets: list[str],
                    known: set[str] | None, domains: set[str]) -> Iterator[str]:
    if (problem := address_problem(addr)):
        yield f"{kind} {addr!r} {problem}"
        return
    dom = _domain(addr)
    if dom in book.domain_aliases:
        yield (f"{kind} {addr}: {dom} is an alias of {book.domain_aliases[dom]}; "
               f"use {addr.rpartition('@')[0]}@{book.domain_aliases[dom]}")
    elif dom not in domains:
        yield f"{kind} {addr}: {dom} is not one of ISMail's domains"
    if known is not None and addr in known:
        yield f"{kind} {addr} has the same address as an account; remove one of them"
    if kind == "alias" and addr in book.groups:
        yield f"{addr} is both an alias and a group; remove one of them"
    if not targets:
        yield f"{kind} {addr} has no {'targets' if kind == 'alias' else 'members'}"
    if len(targets) > MAX_TARGETS:
        yield f"{kind} {addr} has {len(targets)} addresses; at most {MAX_TARGETS} are allowed"
    for target in targets:
        if (problem := address_problem(target)):
            yield f"{kind} {addr}: {target!r} {problem}"
        elif book.rewrite(target) == addr:
            yield f"{kind} {addr} points to itself"
        elif known is not None:
            t = book.rewrite(target)
            if (_domain(t) in domains and t not in known and t not in book.aliases
                    and t not in book.groups and _domain(t) not in book.catch_all):
                yield f"{kind} {addr}: {target} is not an account, alias or group"


def _graph_problems(book: _Book) -> list[tuple[str, str]]:
    """Loops, depth and size of nested entries (targets rewritten through domain aliases)."""
    edges = {a: [t for t in dict.fromkeys(book.rewrite(x) for x in book.targets(a))
                 if t != a and (t in book.aliases or t in book.groups)]
             for a in sorted(set(book.aliases) | set(book.groups))}
    out: list[tuple[str, str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                loop = path[path.index(nxt):] + [node, nxt]  # nxt is an ancestor
                out.append((node, "loop through aliases and groups: " + " -> ".join(loop)))
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2
    for node in edges:
        if node not in state:
            visit(node, [])
    if out:
        return out  # depth and size are infinite on a loop; report the loop alone
    depth: dict[str, int] = {}
    leaves: dict[str, frozenset[str]] = {}
    for node in reversed(_topological(edges)):
        depth[node] = 1 + max((depth[n] for n in edges[node]), default=0)
        own = {book.rewrite(x) for x in book.targets(node)} - set(edges) - {node}
        leaves[node] = frozenset(own.union(*(leaves[n] for n in edges[node])))
        if depth[node] > MAX_DEPTH:
            out.append((node, f"{node} nests aliases and groups {depth[node]} deep; "
                              f"at most {MAX_DEPTH} are allowed"))
        elif len(leaves[node]) > MAX_TARGETS:
            out.append((node, f"{node} expands to {len(leaves[node])} addresses; "
                              f"at most {MAX_TARGETS} are allowed"))
    return out


def _topological(edges: dict[str, list[str]]) -> list[str]:
    order: list[str] = []
    seen: set[str] = set()

    def visit(node: str) -> None:
        seen.add(node)
        for nxt in edges[node]:
            if nxt not in seen:
                visit(nxt)
        order.append(node)
    for node in edges:
        if node not in seen:
            visit(node)
    return order[::-1]  # every node before the nodes it points to


# ----- the file -----
