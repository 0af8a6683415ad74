"""An OTLP/HTTP trace receiver that decodes with the official protobuf definitions
(`opentelemetry-proto` from PyPI) and writes each span it receives as one JSON line.

Usage: otlp_receiver.py OUT.jsonl. Prints its port, then serves POST /v1/traces until killed.
"""
import http.server
import json
import sys

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def attributes(pairs):
    return {pair.key: value(pair.value) for pair in pairs}


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with open(sys.argv[1], "a") as out:
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        out.write(json.dumps({
                            "path": self.path,
                            "content_type": self.headers.get("Content-Type"),
                            "service": resource.get("service.name"),
                            "scope": scope_spans.scope.name,
                            "schema_url": scope_spans.schema_url,
                            "name": span.name,
                            "kind": span.kind,
                            "status": span.status.code,
                            "duration_ns": span.end_time_unix_nano - span.start_time_unix_nano,
                            "attributes": attributes(span.attributes),
                        }) + "\n")
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
print(server.server_address[1], flush=True)
server.serve_forever()
