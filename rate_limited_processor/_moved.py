"""The module paths of earlier releases, still importable: `rate_limited_processor.limiter` is now
`rate_limited_processor.core.limiter`, and so on (`config` and `transport` are packages now, which export what
those modules did). An import of an old path loads the new module, under both
names, only when asked for (nothing here is imported eagerly)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

#: Old module (under the package) -> where it lives now.
MOVED = {
    "errors": "base.errors", "models": "base.models", "records": "base.records", "clock": "base.clock",
    "strict_json": "base.strict_json", "atomic_write": "base.atomic_write",
    "endpoints": "providers.endpoints", "token_estimation": "providers.token_estimation",
    "limiter": "core.limiter", "rate_control": "core.rate_control", "learned_limits": "core.learned_limits",
    "decisions": "core.decisions", "retry_policy": "core.retry_policy", "scheduler": "core.scheduler",
    "arrivals": "core.arrivals", "budget": "core.budget", "costs": "core.costs",
    "credentials": "config.credentials", "streaming": "transport.streaming",
    "runner": "engine.processor", "lanes": "engine.lanes", "collector": "engine.collector",
    "shared_limiter": "engine.shared_limiter",
    "request_io": "files.request_io", "resume": "files.resume", "side_files": "files.side_files",
    "parquet_output": "files.parquet",
    "job": "jobs.file_job", "batch_mode": "jobs.batch_job", "batch_state": "jobs.batch_state",
    "batch_api": "jobs.batch_api", "planning": "jobs.planning", "preflight": "jobs.preflight", "probe": "jobs.probe",
    "status": "ui.summary", "report": "ui.report", "report_html": "ui.report_html", "metrics": "ui.metrics",
    "terminal": "ui.terminal",
}
_PACKAGE = __name__.rpartition(".")[0]


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `<package>.<old>` and loads it as the module it moved to."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        package, _, old = fullname.rpartition(".")
        if package != _PACKAGE or old not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(f"{_PACKAGE}.{MOVED[spec.name.rpartition('.')[2]]}")

    def exec_module(self, module: ModuleType) -> None:
        return None  # already executed under its new name


def install() -> None:
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
