"""ISMail: double-click to open the window and start the mail server.

    python3 ismail.pyw [--data-dir DIR]          the window
    python3 ismail.pyw run | account ... | ...   the command line, as `python3 -m ismail`

(``.pyw`` runs without a console window on Windows; this file is also the entry of the
.exe, where ismail/entry.py tells the window and the command line apart.)
"""
import sys
from pathlib import Path

# A double-click starts Python in some other folder: find the program's own packages first.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gui.launch import main as gui_main  # noqa: E402

try:
    from ismail.entry import main as entry_main  # noqa: E402
except ImportError:  # a tree without the packaging entry: the window is all this file offers
    entry_main = None

if __name__ == "__main__":
    sys.exit(entry_main(gui_main) if entry_main is not None else gui_main(sys.argv[1:]))
