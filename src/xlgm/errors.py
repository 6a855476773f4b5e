"""User-facing errors (defined in `xlgm.core.errors`; this is the name the rest of the library imports)."""

from xlgm.core.errors import DataFormatError, OneLineParser, XlgmError, exit_status

__all__ = ["DataFormatError", "OneLineParser", "XlgmError", "exit_status"]
