mod adversarial;
mod config;
mod exchanges;
mod mcp;
mod sdks;
mod support;
mod telemetry;
mod translation;
