"""ISMail's window: Tk in the main thread, the mail server in its own threads, one process.

    launch.py       start-up: one instance per data folder, the mail log, the main loop,
                    and a clean stop at log-off, shutdown and SIGTERM
    app.py          the main window: state, live figures, activity, menus
    controller.py   the MailServer's life cycle and the settings file, without Tk
    settings.py     the settings dialog (idlelib's ConfigDialog shape); pages.py its tabs
    connectionspage.py  the Connections tab: SmartHost, SMTP, and POP3 beside IMAP
    accountspage.py the Accounts tab, with the selected account's folders
    programpage.py  the Program tab: AutoStart at log-on, start SMTP when the window opens
    queueview.py    the outgoing queue, paged so 100,000 entries stay quick
    statsview.py    the counters, grouped as the original program showed them (and POP3, IMAP)
    tools.py        Test port 25 and Test SmartHost
    helpwin.py      Help > README
    events.py       the bridge from server threads to Tk: queues polled with after()
    instance.py     one ISMail per data folder (an OS file lock)
    widgets.py      the look, red error labels, the small query dialog
"""
