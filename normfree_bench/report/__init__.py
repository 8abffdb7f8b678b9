"""One self-contained HTML page for a run directory (``normfree-bench report``).

Usage: ``from normfree_bench.report import write_report``
"""

from normfree_bench.report.html import write_report

__all__ = ["write_report"]
