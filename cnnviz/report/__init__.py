"""The static HTML report: :mod:`.collect` reads what to show, :mod:`.pages` writes it
(with :mod:`.templating`, the helpers every page writer shares)."""

from .pages import write_report

__all__ = ["write_report"]
