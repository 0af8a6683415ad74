//! Integration tests of offswitch-llm.
