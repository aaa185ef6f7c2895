"""The POP3 server (RFC 1939): a session state machine and its place on the connection layer."""
