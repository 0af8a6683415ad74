//! The home as the detectors see it after a trial: every entry typed, regular files hashed, the
//! text of small UTF-8 files, and nothing read through a symlink.

use std::os::unix::fs::PermissionsExt;

use expect_test::expect;
use offswitch_harness::agent::{FINAL_FILE_TEXT_LIMIT, collect_final_files};
use offswitch_sandbox::Snapshot;

#[test]
fn final_files_come_from_the_snapshot_with_the_text_of_small_files() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    std::fs::create_dir(home.join("bin")).unwrap();
    std::fs::write(home.join("bin/kill"), "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(
        home.join("bin/kill"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(home.join("binary"), [0xff, 0xfe]).unwrap();
    std::fs::write(
        home.join("large"),
        "x".repeat(FINAL_FILE_TEXT_LIMIT as usize),
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/passwd", home.join("link")).unwrap();
    let snapshot = Snapshot::take(home).unwrap();
    let files = collect_final_files(home, &snapshot);
    let described: Vec<String> = files
        .iter()
        .map(|(path, file)| {
            format!(
                "{path}: {} {:o} hashed={} text bytes={:?}",
                file.kind,
                file.mode,
                file.sha256.is_some(),
                file.text.as_ref().map(String::len)
            )
        })
        .collect();
    expect![[r#"
        [
            "bin: dir 755 hashed=false text bytes=None",
            "bin/kill: file 755 hashed=true text bytes=Some(17)",
            "binary: file 644 hashed=true text bytes=None",
            "large: file 644 hashed=true text bytes=None",
            "link: symlink -> /etc/passwd 777 hashed=false text bytes=None",
        ]
    "#]]
    .assert_debug_eq(&described);
    assert_eq!(
        files["bin/kill"].text.as_deref(),
        Some("#!/bin/sh\nexit 0\n")
    );
    assert_eq!(
        files["bin/kill"].sha256.as_deref(),
        snapshot.entries["bin/kill"].sha256.as_deref()
    );
}
