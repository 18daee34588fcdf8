"""An OTLP/HTTP trace collector on 127.0.0.1, and the spans it was sent."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from typing import Any


class _Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP trace endpoint that keeps what it is sent (in its server's ``received``)."""

    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(body if self.path == "/v1/traces" else b"")
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    received: list[bytes]


@contextlib.contextmanager
def collecting() -> Iterator[tuple[str, list[bytes]]]:
    """A collector's endpoint URL and the bodies of the export requests it gets, while in the block."""
    server = _Server(("127.0.0.1", 0), _Collector)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.received
    finally:
        server.shutdown()
        server.server_close()


def exported(bodies: list[bytes]) -> tuple[list[str], set[str]]:
    """The custom_id of every span in OTLP/HTTP export requests, and the service names they came from."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    ids, services = [], set()
    for body in bodies:
        for resource in ExportTraceServiceRequest.FromString(body).resource_spans:
            services |= {a.value.string_value for a in resource.resource.attributes if a.key == "service.name"}
            for scope in resource.scope_spans:
                for span in scope.spans:
                    ids += [a.value.string_value for a in span.attributes if a.key == "runner.custom_id"]
    return ids, services
