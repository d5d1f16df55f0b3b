"""One self-contained HTML report per run folder: ``write_report(run_dir, out=None) -> Path``.

The plots need matplotlib (``pip install 'anet-lite[report]'``); without it the report is
written with its tables and a note instead of the plots.
"""

from __future__ import annotations

from .html import RunData, load_run, plots_available, write_report

__all__ = ["RunData", "load_run", "plots_available", "write_report"]
