"""Channel lists as users write them: ``0-63``, ``3,7,10-20``."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import UsageError

__all__ = ["parse_channels"]


def parse_channels(spec: str | Sequence[int] | None, n_channels: int, limit: int = 64,
                   what: str = "channels") -> list[int]:
    """``"0-63"``, ``"3,5,10-12"``, a list, or ``None`` (the first ``limit``) -> channel list.

    ``what`` names the argument in error messages."""
    if spec is None or spec == "":
        return list(range(min(limit, n_channels)))
    try:
        out = _parse(spec, n_channels) if isinstance(spec, str) else [int(c) for c in spec]
    except ValueError:
        raise UsageError(f"`{what}` {spec!r}: expected numbers and ranges such as 0-63 or "
                         "3,7,10-20") from None
    bad = [c for c in out if not 0 <= c < n_channels]
    if bad:
        raise UsageError(f"`{what}`: {bad[:5]} out of range; valid: 0-{n_channels - 1}")
    return out


def _parse(spec: str, n_channels: int) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part.lstrip("-"):
            a, b = part.split("-", 1)
            # a range past the channels is refused as it is, not first built (0-999999999999)
            out.extend(range(int(a), min(int(b), n_channels) + 1))
        elif part:
            out.append(int(part))
    return out
