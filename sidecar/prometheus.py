"""prometheus_client's metric classes, without the rest of the library.

`prometheus_client/__init__.py` imports every part of the library, among them
`exposition`, which brings in http.server, wsgiref, urllib.request and gzip
for its own servers and the push gateway. In a process as small as the
sidecar that costs about 4 MiB of resident memory and 50 ms of start-up.

So, unless the program has imported the package already, the package is put
in `sys.modules` without running its `__init__`, and only the submodules used
here are imported. The first use of anything else from the package (a test,
or another library in the same process) runs the real `__init__` then, so the
package behaves as usual for everyone else.

`text_exposition` writes the Prometheus text format 0.0.4 exactly as
`prometheus_client.exposition.generate_latest` does (tests compare them byte
for byte); OpenMetrics comes from the library's own, light, module.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

_PACKAGE: Final = "prometheus_client"


class _BarePackage(types.ModuleType):
    """A package whose `__init__` runs only when something asks for more than
    its submodules."""

    def __getattr__(self, name: str) -> Any:
        if importlib.util.find_spec(f"{self.__name__}.{name}") is not None:
            return importlib.import_module(f"{self.__name__}.{name}")
        spec = self.__spec__
        if spec is None or spec.loader is None:  # pragma: no cover - set below
            raise AttributeError(name)
        # From now on, an ordinary module.
        self.__class__ = types.ModuleType  # type: ignore[assignment]
        spec.loader.exec_module(self)
        return getattr(self, name)


def _import_without_init() -> None:
    if _PACKAGE in sys.modules:
        return
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # the ordinary import below reports what is missing
    package = _BarePackage(_PACKAGE)
    package.__spec__ = spec
    package.__loader__ = spec.loader
    package.__file__ = spec.origin
    package.__path__ = list(spec.submodule_search_locations)
    package.__package__ = _PACKAGE
    sys.modules[_PACKAGE] = package


_import_without_init()

# These submodules import only each other and the standard library.
from prometheus_client.metrics import Counter, Gauge, Histogram  # noqa: E402
from prometheus_client.openmetrics.exposition import (  # noqa: E402
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)
from prometheus_client.openmetrics.exposition import (  # noqa: E402
    escape_label_name,
    escape_metric_name,
)
from prometheus_client.openmetrics.exposition import (  # noqa: E402
    generate_latest as openmetrics_exposition,
)
from prometheus_client.registry import CollectorRegistry  # noqa: E402
from prometheus_client.utils import floatToGoString  # noqa: E402

_float_text: Callable[[float], str] = floatToGoString

if TYPE_CHECKING:
    from prometheus_client.samples import Sample

__all__ = [
    "OPENMETRICS_CONTENT_TYPE",
    "TEXT_CONTENT_TYPE",
    "CollectorRegistry",
    "Counter",
    "Gauge",
    "Histogram",
    "encoder_for",
    "openmetrics_exposition",
    "text_exposition",
]

TEXT_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_TYPE_IN_TEXT: Final = {
    "info": "gauge",
    "stateset": "gauge",
    "gaugehistogram": "histogram",
    "unknown": "untyped",
}
_MOVED_TO_OWN_FAMILY: Final = ("_created", "_gsum", "_gcount")
"""OpenMetrics-only samples, which the text format lists as gauges after
their metric."""


def text_exposition(registry: CollectorRegistry) -> bytes:
    """Every metric in `registry` in the Prometheus text format 0.0.4."""
    output: list[str] = []
    for metric in registry.collect():
        name = metric.name
        if metric.type == "counter":
            name += "_total"
        elif metric.type == "info":
            name += "_info"
        help_text = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        output.append(f"# HELP {escape_metric_name(name)} {help_text}\n")
        kind = _TYPE_IN_TEXT.get(metric.type, metric.type)
        output.append(f"# TYPE {escape_metric_name(name)} {kind}\n")
        moved: dict[str, list[str]] = {}
        for sample in metric.samples:
            suffix = next(
                (s for s in _MOVED_TO_OWN_FAMILY if sample.name == metric.name + s),
                None,
            )
            if suffix is None:
                output.append(_sample_line(sample))
            else:
                moved.setdefault(suffix, []).append(_sample_line(sample))
        for suffix, lines in sorted(moved.items()):
            family = escape_metric_name(metric.name + suffix)
            output.append(f"# HELP {family} {help_text}\n")
            output.append(f"# TYPE {family} gauge\n")
            output.extend(lines)
    return "".join(output).encode("utf-8")


def _sample_line(sample: Sample) -> str:
    labels = ""
    if sample.labels:
        pairs = ",".join(
            f'{escape_label_name(key)}="{_escape_label_value(value)}"'
            for key, value in sorted(sample.labels.items())
        )
        labels = f"{{{pairs}}}"
    timestamp = ""
    if sample.timestamp is not None:
        timestamp = f" {int(float(sample.timestamp) * 1000):d}"
    value = _float_text(sample.value)
    return f"{escape_metric_name(sample.name)}{labels} {value}{timestamp}\n"


def _escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def encoder_for(accept: str) -> tuple[Callable[[CollectorRegistry], bytes], str]:
    """(function of a registry, content type) for a request's Accept header.

    OpenMetrics 1.0 when the scraper lists it, as Prometheus does; otherwise
    the text format 0.0.4, which every scraper reads.
    """
    for offered in accept.split(","):
        if offered.split(";")[0].strip().lower() == "application/openmetrics-text":
            return openmetrics_exposition, OPENMETRICS_CONTENT_TYPE
    return text_exposition, TEXT_CONTENT_TYPE
