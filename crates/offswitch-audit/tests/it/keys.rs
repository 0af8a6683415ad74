//! Key files: the secret written 0600 and never overwritten, a readable secret refused, the
//! public key read back, and concurrent first use ending with one key.

use std::os::unix::fs::PermissionsExt as _;

use offswitch_audit::{AuditError, AuditKey, PUBLIC_KEY_FILE, SECRET_KEY_FILE, load_public_key};

use crate::temp;

#[test]
fn a_saved_key_loads_back_and_is_never_overwritten() {
    let (_dir, dir) = temp();
    let secret = dir.join(SECRET_KEY_FILE);
    let public = dir.join(PUBLIC_KEY_FILE);
    let key = AuditKey::generate().unwrap();
    key.save(&secret, &public).unwrap();
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    assert_eq!(
        AuditKey::load(&secret).unwrap().public_key(),
        key.public_key()
    );
    assert_eq!(load_public_key(&public).unwrap(), key.public_key());

    let before = std::fs::read(&secret).unwrap();
    let error = AuditKey::generate()
        .unwrap()
        .save(&secret, &public)
        .unwrap_err();
    assert!(matches!(error, AuditError::AlreadyExists { .. }), "{error}");
    assert_eq!(std::fs::read(&secret).unwrap(), before);
    // No temporary file is left behind.
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["audit.key", "audit.pub"]);
    // A debug print never shows the secret.
    let secret_text = String::from_utf8(before).unwrap();
    let secret_hex = secret_text.split("\"secret_key\":\"").nth(1).unwrap();
    assert!(!format!("{key:?}").contains(&secret_hex[..64]));
}

#[test]
fn a_secret_key_others_can_read_is_refused() {
    let (_dir, dir) = temp();
    let secret = dir.join(SECRET_KEY_FILE);
    AuditKey::generate()
        .unwrap()
        .save(&secret, &dir.join(PUBLIC_KEY_FILE))
        .unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = AuditKey::load(&secret).unwrap_err();
    assert!(
        error
            .to_string()
            .ends_with("is readable by others (mode 644); it must be 0600"),
        "{error}"
    );
}

#[test]
fn key_files_that_are_not_keys_are_told_apart() {
    let (_dir, dir) = temp();
    let secret = dir.join(SECRET_KEY_FILE);
    let public = dir.join(PUBLIC_KEY_FILE);
    AuditKey::from_seed([1; 32]).save(&secret, &public).unwrap();
    let error = load_public_key(&secret).unwrap_err().to_string();
    assert!(
        error.ends_with("this is a secret key file; give its audit.pub instead"),
        "{error}"
    );
    let text = std::fs::read_to_string(&public).unwrap();
    std::fs::write(&public, text.to_uppercase()).unwrap();
    assert!(load_public_key(&public).is_err());
    let edited = dir.join("edited.key");
    let secret_text = std::fs::read_to_string(&secret).unwrap();
    let other_public = hex::encode(AuditKey::from_seed([2; 32]).public_key().as_bytes());
    let original_public = hex::encode(AuditKey::from_seed([1; 32]).public_key().as_bytes());
    std::fs::write(
        &edited,
        secret_text.replace(&original_public, &other_public),
    )
    .unwrap();
    std::fs::set_permissions(&edited, std::fs::Permissions::from_mode(0o600)).unwrap();
    let error = AuditKey::load(&edited).unwrap_err().to_string();
    assert!(error.contains("the file was edited"), "{error}");
}

#[test]
fn processes_creating_the_default_key_at_once_share_one() {
    let (_dir, dir) = temp();
    let keys_dir = dir.join("nested/audit");
    let keys: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| AuditKey::load_or_create_in(&keys_dir).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for key in &keys {
        assert_eq!(key.public_key(), keys[0].public_key());
    }
    let mode = std::fs::metadata(&keys_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    assert_eq!(
        load_public_key(&keys_dir.join(PUBLIC_KEY_FILE)).unwrap(),
        keys[0].public_key()
    );
}
