"""Live signatures: a running engine follows its model folder without a restart.

:func:`rws_hub.io.folder.publish_signature` (``rws publish``) writes a signature file, lists it
in ``config.json`` and rewrites the manifest last, each atomically. A :class:`FolderWatcher`
polls the manifest (a ``stat`` per call, at most every ``interval`` seconds); when it changed,
it verifies the signatures whose manifest entry is new or different and loads them into the
engine (:meth:`Engine.add_signature`, replacing same-named ones), and drops the ones no longer
listed. Requests in flight keep the tables they started with; nothing fails while a signature
arrives. A signature that does not verify or fit is left out and recorded in
``engine.refused``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from rws_hub.errors import RWSError
from rws_hub.inference.engine import Engine
from rws_hub.io.folder import (
    MANIFEST_FILE,
    ModelFolder,
    check_signature,
    read_manifest,
    read_signature_file,
    signature_file,
)

__all__ = ["FolderWatcher"]


class FolderWatcher:
    """Keeps ``engine``'s signatures equal to those a model folder lists (see module doc)."""

    def __init__(self, engine: Engine, folder: str | Path, interval: float = 1.0) -> None:
        self.engine = engine
        self.root = Path(folder)
        self.interval = float(interval)
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamp = self._manifest_stamp()
        manifest = self._read_manifest()
        self._seen: dict[str, Any] = {
            n: (manifest or {}).get(signature_file(n)) for n in engine.defaults
        }
        self.changes: list[dict[str, Any]] = []

    def _manifest_stamp(self) -> tuple[int, int] | None:
        try:
            st = (self.root / MANIFEST_FILE).stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _read_manifest(self) -> dict[str, dict[str, Any]] | None:
        try:
            return read_manifest(self.root)
        except (RWSError, OSError, ValueError):
            return None

    def poll(self, force: bool = False) -> list[dict[str, Any]]:
        """Check the folder (at most every ``interval`` seconds unless ``force``); apply and
        return what changed: ``[{"added"|"replaced"|"dropped"|"refused": name, ...}]``."""
        now = time.monotonic()
        if not force and now - self._checked < self.interval:
            return []
        with self._lock:
            self._checked = now
            stamp = self._manifest_stamp()
            if stamp is None or stamp == self._stamp:
                return []
            self._stamp = stamp
            return self._sync()

    def _sync(self) -> list[dict[str, Any]]:
        manifest = self._read_manifest()
        if manifest is None:
            return []  # mid-write or damaged: the next change is picked up
        try:
            config = ModelFolder.read_config(self.root)
        except RWSError:
            return []
        listed = [n for n in config.get("signatures", []) if isinstance(n, str)]
        changes: list[dict[str, Any]] = []
        loaded = set(self.engine.defaults)
        for name in listed:
            entry = manifest.get(signature_file(name))
            if entry is None or (name in loaded and self._seen.get(name) == entry):
                continue
            rel = signature_file(name)
            try:
                sig = read_signature_file(
                    self.root / rel, name, manifest, device=self.engine.device
                )
                check_signature(sig, config, rel=rel)
                self.engine.add_signature(sig, replace=True)
            except (RWSError, OSError, ValueError) as exc:
                self.engine.refused[rel] = str(exc)
                changes.append({"refused": name, "reason": str(exc)})
                continue
            self.engine.refused.pop(rel, None)
            changes.append({"replaced" if name in loaded else "added": name})
            self._seen[name] = entry
        # drop only the folder's own signatures that it no longer lists (not referenced sets)
        own = {n for n, entry in self._seen.items() if entry is not None}
        for name in sorted((own & loaded) - set(listed)):
            self.engine.drop_signature(name)
            self._seen.pop(name, None)
            changes.append({"dropped": name})
        self.changes.extend(changes)
        return changes
