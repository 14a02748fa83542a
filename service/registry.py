"""ModelRegistry: the engines being served, by name and alias, kept in sync with the checkpoint dir.

A watcher thread polls the folder; a new or changed model folder is loaded beside the one being
served and swapped in under a lock, so a request sees either the old engine or the new one. A
folder that fails to load is logged, counted and skipped; a previous version keeps serving. A name
with versions serves the one its `current` pointer names (models/versions.py); a promotion or a
rollback elsewhere (the worker, another API process, `rnnlm models`) is picked up on the next scan.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from pathlib import Path

from models.checkpoint import CONFIG, VOCAB, WEIGHTS, load_model, valid_name
from models.device import DeviceError, resolve_device
from models.engine import Engine
from models.errors import CheckpointError
from models.versions import POINTER, current_folder
from service import metrics
from service.errors import ModelNotFoundError
from service.settings import Settings

log = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int, int] | None, ...]
DEFAULT_ALIAS = "default"


def folder_stamp(folder: Path) -> Stamp:
    """(mtime_ns, size, inode) of the files that make a model; changes whenever one is rewritten."""
    out = []
    for name in (CONFIG, WEIGHTS, VOCAB):
        try:
            st = (folder / name).stat()
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def model_stamp(folder: Path) -> Stamp:
    """folder_stamp of the version being served, and the stamp of the version pointer: a promotion or a
    rollback (the pointer replaced) is a change."""
    try:
        served = current_folder(folder)
    except CheckpointError:  # a broken pointer: loading says why
        served = folder
    try:
        st = (folder / POINTER).stat()
        pointer = (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        pointer = None
    return (*folder_stamp(served), pointer)


def _recent(path: Path, seconds: float = 60.0) -> bool:
    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:
        return False


class ModelRegistry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = Path(settings.checkpoints)
        self._engines: dict[str, Engine] = {}
        self._stamps: dict[str, Stamp] = {}   # stamp of the version being served
        self._failed: dict[str, Stamp] = {}   # stamp that last failed to load (not retried until it changes)
        self._lock = threading.Lock()          # guards _engines (readers take a snapshot reference)
        self._scan_lock = threading.Lock()     # one scan at a time (watcher vs. reload())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # the configured device, resolved once: where it is missing no model loads, /ready says why
        # and model requests get 503 (not a crash, and not a misleading 404)
        self.device_error: str | None = None
        try:
            self.device = resolve_device(settings.device)
        except DeviceError as exc:
            self.device, self.device_error = None, str(exc)
            log.error("%s: no model will be served", exc)

    # ---- lookups -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._engines)

    def engines(self) -> list[Engine]:
        with self._lock:
            return [self._engines[name] for name in sorted(self._engines)]

    def resolve(self, name: str | None) -> str | None:
        """Model name for a name or alias (None means "default"); None if nothing matches."""
        name = name or DEFAULT_ALIAS
        with self._lock:
            if name in self._engines:
                return name
            target = self.settings.aliases.get(name)
            if target in self._engines:
                return target
            if name == DEFAULT_ALIAS and self._engines:
                return min(self._engines)  # the configured default is missing: serve something
        return None

    def get(self, name: str | None, param: str = "model") -> Engine:
        """The engine for a name or alias; raises ModelNotFoundError."""
        resolved = self.resolve(name)
        with self._lock:
            engine = self._engines.get(resolved) if resolved else None
        if engine is None:
            if self.device_error is not None:
                raise DeviceError(f"no model can be served: {self.device_error}")
            raise ModelNotFoundError(name or DEFAULT_ALIAS, param)
        return engine

    def aliases_of(self, name: str) -> list[str]:
        aliases = set(self.settings.aliases) | {DEFAULT_ALIAS}
        return sorted(a for a in aliases if a != name and self.resolve(a) == name)

    # ---- loading -------------------------------------------------------------------------------
    def _candidates(self) -> tuple[dict[str, Path], set[str]]:
        """Model folders by name, and the names with an atomic swap in progress (`.NAME.tmp-*`)."""
        if not self.root.is_dir():
            return {}, set()
        found, swapping = {}, set()
        for path in self.root.iterdir():
            name = path.name
            if name.startswith("."):  # temporaries of atomic writes (models.checkpoint.save_model)
                if _recent(path):  # a stale one left by a killed writer is no swap in progress
                    swapping.add(name[1:].split(".tmp-")[0].split(".old-")[0])
                continue
            if valid_name(name) and path.is_dir() and (path / CONFIG).is_file():
                found[name] = path
        return found, swapping

    def reload(self) -> None:
        """One synchronous scan: load new and changed models, drop removed ones."""
        with self._scan_lock:
            if self.device is None:  # the configured device is missing: nothing can load
                return
            found, swapping = self._candidates()
            loaded = False
            for name, path in sorted(found.items()):
                stamp = model_stamp(path)
                if stamp == self._stamps.get(name) or stamp == self._failed.get(name):
                    continue
                try:
                    engine = self._engine(current_folder(path), name)  # the version its pointer names
                except (CheckpointError, DeviceError) as exc:
                    self._failed[name] = stamp
                    metrics.MODEL_LOAD_FAILURES.inc()
                    kept = " (still serving the previous version)" if name in self._stamps else ""
                    log.warning("cannot load model %r%s: %s", name, kept, exc)
                    continue
                except Exception:  # a bug or a torch error: never take the watcher down
                    self._failed[name] = stamp
                    metrics.MODEL_LOAD_FAILURES.inc()
                    log.exception("unexpected error loading model %r from %s", name, path)
                    continue
                with self._lock:
                    replaced = name in self._engines
                    self._engines[name] = engine
                metrics.model_device(name, str(engine.device), str(engine.dtype).removeprefix("torch."))
                self._stamps[name] = stamp
                self._failed.pop(name, None)
                loaded = True
                log.info("%s model %r from %s (%s, %s parameters)", "reloaded" if replaced else "loaded",
                         name, path, engine.model.config.arch, f"{engine.parameters:,}")
            for name in set(self._stamps) - set(found) - swapping:  # mid-swap: gone for a moment only
                with self._lock:
                    self._engines.pop(name, None)
                metrics.model_device(name, None)
                self._stamps.pop(name, None)
                log.info("model %r removed from %s: no longer served", name, self.root)
            for name in set(self._failed) - set(found):
                self._failed.pop(name, None)
            with self._lock:
                metrics.MODELS_LOADED.set(len(self._engines))
            if loaded and gc.get_freeze_count():  # the app froze its start-up objects (service.app): a model
                gc.freeze()                        # loaded later joins them, out of the collector's full passes

    def _engine(self, path: Path, name: str) -> Engine:
        """A fresh engine (hence an empty state cache) with this model's performance settings."""
        s = self.settings
        return Engine(load_model(path, name=name), state_cache_bytes=int(s.state_cache_mb * 2**20),
                      cache_listener=metrics.state_cache_listener(name),
                      quantize="int8" if name in s.quantize else None, device=self.device, dtype=s.serve_dtype)

    # ---- watcher -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the background watcher (no-op when reload_interval_s <= 0)."""
        interval = self.settings.reload_interval_s
        if interval <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, args=(interval,), name="rnnlm-model-watcher",
                                        daemon=True)
        self._thread.start()

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.reload()
            except Exception:  # e.g. the checkpoint dir vanished mid-scan: try again next tick
                log.exception("model watcher scan failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        for name in self.names():  # this process no longer serves them
            metrics.model_device(name, None)
