"""Child processes that cannot outlive their parent (Linux ``PR_SET_PDEATHSIG``)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies, however it dies (SIGKILL, a crash)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the parent's own shutdown still stops its children


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen`` that ties the child's life to its parent's, or None
    where the platform has no such call. Only for parents that run no other threads when they spawn."""
    return _die_with_parent if sys.platform == "linux" else None
