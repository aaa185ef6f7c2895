"""Aliases, groups, catch-all and domain aliases as an SMTP client meets them (issue 14).

The session is fed bytes directly against a real MailServer (spool and Maildirs on disk),
as in test_session; the address book is edited through its own API, as the CLI does.
"""
import unittest

from ismail.smtp.policy import Policy
from ismail.smtp.session import Session
from tests.test_session import SessionTestCase

DOMAINS = {"example.test", "other.test"}


class AddressBookSmtpTest(SessionTestCase):
    def setUp(self):
        super().setUp()
        for user in ("ann", "bob"):
            self.server.accounts.add(f"{user}@example.test", "pw", self.config.local_domains())
        self.book = self.server.addresses
        self.book.reload_interval = 0  # see each edit at once

    def accounts(self) -> set[str]:
        return {i.address for i in self.server.accounts.list(DOMAINS)}

    def send(self, rcpts, sender="stranger@elsewhere.example", trusted=False, subject="hello"):
        """One message to ``rcpts``; returns the RCPT replies and the final reply (or b"")."""
        s = self.session(trusted=trusted)
        s.feed(b"EHLO c.example\r\n")
        self.assertTrue(s.feed(f"MAIL FROM:<{sender}>\r\n".encode()).startswith(b"250"))
        answers = [s.feed(f"RCPT TO:<{r}>\r\n".encode()) for r in rcpts]
        final = b""
        if any(a.startswith(b"250") for a in answers):
            self.assertTrue(s.feed(b"DATA\r\n").startswith(b"354"))
            final = s.feed(f"Subject: {subject}\r\n\r\nbody\r\n.\r\n".encode())
        return answers, final

    def count(self, user, domain="example.test"):
        return len(self.maildir(user, domain))

    def queued_to(self) -> list[tuple[str, list[str]]]:
        return sorted((e["sender"], [r["address"] for r in e["recipients"]]) for e, _ in self.queued())

    def test_alias_delivers_to_each_local_target_and_forwards_the_remote_one(self):
        self.book.set_alias("sales@example.test", ["ann@example.test", "bob@example.test",
                                                   "partner@remote.example"],
                            accounts=self.accounts(), local_domains=DOMAINS)
        answers, final = self.send(["Sales@Example.TEST"])
        self.assertTrue(answers[0].startswith(b"250 2.1.5"), answers)
        self.assertTrue(final.startswith(b"250 2.0.0"), final)
        self.assertEqual((self.count("ann"), self.count("bob"), self.count("user")), (1, 1, 0))
        [(sender, rcpts)] = self.queued_to()
        self.assertEqual(rcpts, ["partner@remote.example"])
        # The remote copy is a forward: the sender is rewritten (SRS) so SPF passes there.
        self.assertTrue(sender.startswith("SRS0="), sender)
        # An alias has no mailbox of its own.
        self.assertFalse((self.dir / "mailboxes" / "example.test" / "sales").exists())

    def test_an_account_reached_twice_gets_one_copy(self):
        self.book.set_alias("sales@example.test", ["ann@example.test"], accounts=self.accounts(),
                            local_domains=DOMAINS)
        self.book.set_alias("info@example.test", ["ann@example.test", "sales@example.test"],
                            accounts=self.accounts(), local_domains=DOMAINS)
        answers, final = self.send(["sales@example.test", "info@example.test", "ann@example.test"])
        self.assertEqual([a[:3] for a in answers], [b"250"] * 3)
        self.assertTrue(final.startswith(b"250"))
        self.assertEqual(self.count("ann"), 1)
        self.assertEqual(self.queued_to(), [])

    def test_alias_targets_keep_their_own_forwarding(self):
        self.server.accounts.set_forward("bob@example.test", ["bob@home.example"])
        self.book.set_alias("sales@example.test", ["bob@example.test"], accounts=self.accounts(),
                            local_domains=DOMAINS)
        self.server.accounts.maybe_reload()
        _, final = self.send(["sales@example.test"])
        self.assertTrue(final.startswith(b"250"))
        self.assertEqual(self.count("bob"), 1)
        self.assertEqual([r for _, r in self.queued_to()], [["bob@home.example"]])

    def test_group_open_to_anyone(self):
        self.book.set_group("team@example.test", ["ann@example.test", "bob@example.test"], "anyone",
                            accounts=self.accounts(), local_domains=DOMAINS)
        answers, final = self.send(["team@example.test"])
        self.assertTrue(final.startswith(b"250"), answers)
        self.assertEqual((self.count("ann"), self.count("bob")), (1, 1))

    def test_group_for_members_only_refuses_others_with_550_5_7_1(self):
        self.book.set_group("team@example.test", ["ann@example.test", "bob@example.test"], "members",
                            accounts=self.accounts(), local_domains=DOMAINS)
        answers, final = self.send(["team@example.test"], sender="stranger@elsewhere.example")
        self.assertTrue(answers[0].startswith(b"550 5.7.1"), answers)
        self.assertIn(b"only members of team@example.test", answers[0])
        self.assertEqual(final, b"")
        answers, final = self.send(["team@example.test"], sender="Ann@example.test")
        self.assertTrue(final.startswith(b"250"), answers)
        self.assertEqual((self.count("ann"), self.count("bob")), (1, 1))

    def test_group_for_local_senders_needs_a_trusted_or_logged_in_client(self):
        self.book.set_group("staff@example.test", ["ann@example.test"], "local",
                            accounts=self.accounts(), local_domains=DOMAINS)
        # A stranger writing one of our addresses is not a local sender.
        answers, _ = self.send(["staff@example.test"], sender="bob@example.test", trusted=False)
        self.assertTrue(answers[0].startswith(b"550 5.7.1"), answers)
        answers, _ = self.send(["staff@example.test"], sender="someone@elsewhere.example", trusted=True)
        self.assertTrue(answers[0].startswith(b"550 5.7.1"), answers)
        answers, final = self.send(["staff@example.test"], sender="bob@example.test", trusted=True)
        self.assertTrue(final.startswith(b"250"), answers)
        self.assertEqual(self.count("ann"), 1)

    def test_group_inside_group_is_expanded_once(self):
        self.book.set_group("a-team@example.test", ["ann@example.test", "bob@example.test"], "anyone",
                            accounts=self.accounts(), local_domains=DOMAINS)
        self.book.set_group("all@example.test", ["a-team@example.test", "ann@example.test",
                                                 "user@example.test"], "anyone",
                            accounts=self.accounts(), local_domains=DOMAINS)
        _, final = self.send(["all@example.test"])
        self.assertTrue(final.startswith(b"250"))
        self.assertEqual((self.count("ann"), self.count("bob"), self.count("user")), (1, 1, 1))

    def test_catch_all_takes_unknown_recipients_only_when_set(self):
        answers, _ = self.send(["nobody@example.test"])
        self.assertTrue(answers[0].startswith(b"550 5.1.1"), answers)
        self.book.set_catch_all("example.test", "ann@example.test", accounts=self.accounts(),
                                local_domains=DOMAINS)
        answers, final = self.send(["nobody@example.test", "bob@example.test"])
        self.assertEqual([a[:3] for a in answers], [b"250", b"250"])
        self.assertTrue(final.startswith(b"250"))
        self.assertEqual((self.count("ann"), self.count("bob")), (1, 1))
        # The other domain has no catch-all.
        answers, _ = self.send(["nobody@other.test"])
        self.assertTrue(answers[0].startswith(b"550 5.1.1"), answers)

    def test_domain_alias_delivers_as_the_target_domain(self):
        answers, _ = self.send(["ann@example.org"])
        self.assertTrue(answers[0].startswith(b"554 5.7.1"), answers)  # not ours: no relay
        self.book.set_domain_alias("example.org", "example.test", local_domains=DOMAINS,
                                   accounts=self.accounts())
        self.book.set_alias("sales@example.test", ["bob@example.test"], accounts=self.accounts(),
                            local_domains=DOMAINS)
        answers, final = self.send(["ann@example.org", "sales@EXAMPLE.ORG", "postmaster@example.org"])
        self.assertEqual([a[:3] for a in answers], [b"250"] * 3, answers)
        self.assertTrue(final.startswith(b"250"))
        self.assertEqual((self.count("ann"), self.count("bob"), self.count("postmaster")), (1, 1, 1))
        self.assertFalse((self.dir / "mailboxes" / "example.org").exists())
        answers, _ = self.send(["nobody@example.org"])
        self.assertTrue(answers[0].startswith(b"550 5.1.1"), answers)

    def test_unknown_addresses_still_count_towards_the_harvest_limit(self):
        self.config.antispam.max_unknown_recipients = 3
        self.book.set_alias("sales@example.test", ["ann@example.test"], accounts=self.accounts(),
                            local_domains=DOMAINS)
        s = Session(self.server, Policy(self.config), "192.0.2.1", trusted=False,
                    checks=self.server.antispam.client("192.0.2.1"))
        s.feed(b"EHLO c.example\r\nMAIL FROM:<x@elsewhere.example>\r\n")
        self.assertTrue(s.feed(b"RCPT TO:<sales@example.test>\r\n").startswith(b"250"))
        replies = [s.feed(f"RCPT TO:<n{i}@example.test>\r\n".encode()) for i in range(3)]
        self.assertEqual([r[:3] for r in replies], [b"550", b"550", b"421"])
        self.assertTrue(s.closing)

    def test_an_alias_to_an_account_removed_later_still_reaches_the_others(self):
        self.book.set_alias("sales@example.test", ["ann@example.test", "bob@example.test"],
                            accounts=self.accounts(), local_domains=DOMAINS)
        self.server.accounts.remove("bob@example.test")
        self.server.accounts.maybe_reload()
        answers, final = self.send(["sales@example.test"])
        self.assertTrue(final.startswith(b"250"), answers)
        self.assertEqual(self.count("ann"), 1)

    def test_an_alias_whose_targets_are_all_gone_is_refused_not_lost(self):
        self.book.set_alias("sales@example.test", ["bob@example.test"], accounts=self.accounts(),
                            local_domains=DOMAINS)
        self.server.accounts.remove("bob@example.test")
        self.server.accounts.maybe_reload()
        answers, final = self.send(["sales@example.test"])
        self.assertEqual(answers[0][:3], b"550", answers)
        self.assertEqual(final, b"")

    def test_an_edit_by_another_process_applies_to_the_next_recipient(self):
        from ismail.store.addressbook import AddressBook
        other = AddressBook(self.dir)  # the command line, in its own process
        other.set_alias("sales@example.test", ["ann@example.test"], accounts=self.accounts(),
                        local_domains=DOMAINS)
        _, final = self.send(["sales@example.test"])
        self.assertTrue(final.startswith(b"250"))
        self.assertEqual(self.count("ann"), 1)


if __name__ == "__main__":
    unittest.main()
