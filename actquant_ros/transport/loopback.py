"""Keep Cyclone DDS on loopback (tests, local demo).

Cyclone reads ``CYCLONEDDS_URI`` once, when the first DomainParticipant of the process is created, so
``use_loopback_config`` must run before that (tests call it at import / in a session fixture, and pass
the returned environment to subprocesses).
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

from actquant_core import constants as C

__all__ = ["loopback_config_path", "loopback_uri", "use_loopback_config"]


def loopback_config_path(root: Path | None = None) -> Path:
    """Path of ``config/cyclonedds_loopback.xml``.

    Looked up under ``root`` if given, else in the repository checkout, then in the installed share
    directory (``<prefix>/share/actquant_ros``, where CMake installs ``config/``).
    """
    bases = [root] if root is not None else [Path(__file__).resolve().parents[2], Path(sys.prefix) / "share" / "actquant_ros"]
    candidates = [b / C.CYCLONEDDS_LOOPBACK_CONFIG for b in bases]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"Cyclone loopback config not found; looked at {[str(c) for c in candidates]}")


def loopback_uri(root: Path | None = None) -> str:
    """``file://`` URI of the loopback config, the form ``CYCLONEDDS_URI`` takes."""
    return loopback_config_path(root).as_uri()


def use_loopback_config(env: MutableMapping[str, str] | None = None, root: Path | None = None) -> str:
    """Set ``CYCLONEDDS_URI`` in ``env`` (default: this process' ``os.environ``) to the loopback config.

    Returns the URI.  Call before the first DomainParticipant of the process is created.
    """
    target = os.environ if env is None else env
    uri = loopback_uri(root)
    target[C.ENV_CYCLONEDDS_URI] = uri
    return uri
