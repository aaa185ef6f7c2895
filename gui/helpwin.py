"""Help > README: the README.txt shipped beside the program (or inside the .exe), in a window."""
from __future__ import annotations

import sys
import tkinter as tk
from pathlib import Path
from tkinter import ttk

from .widgets import PAD, Window, place_over


def readme_window(parent: tk.Misc) -> tk.Toplevel:
    win = Window(parent)
    win.title("ISMail README")
    text = tk.Text(win, width=84, height=32, wrap="word", font="TkFixedFont", padx=PAD, pady=PAD)
    ys = ttk.Scrollbar(win, orient="vertical", command=text.yview)
    text.configure(yscrollcommand=ys.set)
    text.grid(row=0, column=0, sticky="nsew")
    ys.grid(row=0, column=1, sticky="ns")
    win.columnconfigure(0, weight=1)
    win.rowconfigure(0, weight=1)
    text.insert("1.0", readme_text())
    text.configure(state="disabled")
    place_over(win, parent)
    return win


def readme_text() -> str:
    places = [Path(__file__).resolve().parent.parent / "README.txt",
              Path(sys.executable).resolve().parent / "README.txt"]
    if hasattr(sys, "_MEIPASS"):  # inside the .exe, bundled files live there
        places.insert(0, Path(sys._MEIPASS) / "README.txt")  # type: ignore[attr-defined]
    for place in places:
        try:
            return place.read_text(encoding="utf-8")
        except OSError:
            continue
    return "README.txt was not found next to the program."
