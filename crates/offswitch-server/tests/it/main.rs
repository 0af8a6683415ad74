//! Integration tests of offswitch-server.
