//! offswitch-llm (being written).
