mod adversarial;
mod config;
mod exchanges;
mod sdks;
mod support;
mod telemetry;
