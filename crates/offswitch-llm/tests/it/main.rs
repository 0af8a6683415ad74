//! Integration tests of offswitch-llm.

#[test]
fn api_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}
    assert_send_sync::<offswitch_llm::Model>();
    assert_send::<offswitch_llm::Sequence>();
}
