"""The static HTML report: :mod:`.collect` reads what to show, :mod:`.render` writes it."""

from .pages import write_report

__all__ = ["write_report"]
