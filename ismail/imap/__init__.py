"""IMAP4rev1 (RFC 3501): session, parser, FETCH, SEARCH and folder views."""
