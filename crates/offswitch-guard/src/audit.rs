//! The guard's audit log is `offswitch-audit`'s tamper-evident log: this adapts its writer to
//! the session's `AuditSink`.

use offswitch_audit::AuditWriter;

use crate::session::AuditSink;

/// An `AuditWriter` as the session's sink.
pub struct Sink(AuditWriter);

impl Sink {
    pub fn new(writer: AuditWriter) -> Sink {
        Sink(writer)
    }
}

impl AuditSink for Sink {
    fn append(&mut self, kind: &str, body: &serde_json::Value) -> Result<(), String> {
        self.0
            .append(kind, body)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn finish(self: Box<Self>) -> Result<(), String> {
        self.0.finish().map(|_| ()).map_err(|e| e.to_string())
    }
}
