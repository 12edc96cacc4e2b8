"""The argument parser every rtseg command line uses: usage errors as one-line ConfigErrors."""
from __future__ import annotations

import argparse
from typing import Any, NoReturn, Sequence

from rtseg.errors import ConfigError


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one-line ConfigErrors naming the command (exit code 2 via
    :func:`rtseg.errors.exit_status`), and refuses options given an empty value (``--output ""``, often an
    unset shell variable), which would otherwise read as "not given" and silently drop an output."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see {self.prog} --help)")

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        for action in self._actions:
            value = getattr(parsed, action.dest, None)
            if action.option_strings and isinstance(value, str) and not value.strip() and value != action.default:
                self.error(f"{action.option_strings[-1]} is empty (an unset shell variable?); give it a value")
        return parsed
