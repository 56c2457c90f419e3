"""structlog, configured once: JSON off a terminal, readable on one.

Every line carries the context bound with structlog.contextvars (release,
namespace, phase, attempt, workflow id). The redaction processor masks any
field whose name marks it as secret, wherever it sits in the event.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

SECRET_KEY = re.compile(
    r"(pass(word)?|secret|token|key|credential|auth)", re.IGNORECASE
)
MASK = "***"


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: MASK if SECRET_KEY.search(str(k)) else _mask(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_mask(v) for v in value]
    return value


def redact_secrets(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask values of secret-looking keys (password, token, key, ...) at any depth."""
    for key in list(event):
        if key != "event" and SECRET_KEY.search(key):
            event[key] = MASK
        else:
            event[key] = _mask(event[key])
    return event


def configure(log_format: str = "auto", level: int = logging.INFO) -> None:
    """Configure structlog and the standard library's logging (the SDK logs there)."""
    render_json = log_format == "json" or (
        log_format == "auto" and not sys.stderr.isatty()
    )
    # Tracebacks leave out local variables. An activity's locals include the
    # request, whose values can hold secrets that redact_secrets does not mask.
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if render_json
        else structlog.dev.ConsoleRenderer(
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False)
        )
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    if render_json:
        # A plain traceback (code lines, no locals) in place of exc_info,
        # which the JSON renderer would write as the exception's repr only.
        shared.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # ExtraAdder runs before redact_secrets, so that fields passed with
            # the standard library's extra= are masked too.
            foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Request and response bodies can hold secrets: keep the HTTP client quiet.
    logging.getLogger("kubernetes_asyncio").setLevel(logging.WARNING)
