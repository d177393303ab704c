"""Progress reporting: a tqdm bar on a terminal, plain log lines otherwise (CI, DVC, files)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger("pipeline.core.progress")


def interactive() -> bool:
    """True when stderr is a terminal a bar can redraw on."""
    return sys.stderr.isatty()


class Progress:
    """A counter with a postfix that renders as a bar or as periodic log lines."""

    def __init__(self, total: int, desc: str, every: int = 5) -> None:
        self.total, self.desc, self.every, self.n = total, desc, every, 0
        self.bar = tqdm(total=total, desc=desc, leave=False) if interactive() else None

    def update(self, **postfix: Any) -> None:
        """Advance by one and show the latest values."""
        self.n += 1
        text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in postfix.items())
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
        elif self.n == 1 or self.n % self.every == 0 or self.n == self.total:
            log.info("%s %d/%d %s", self.desc, self.n, self.total, text)

    def close(self) -> None:
        """Remove the bar."""
        if self.bar is not None:
            self.bar.close()
