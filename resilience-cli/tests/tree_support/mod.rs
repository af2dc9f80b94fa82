//! Comparing directory trees: what the CLI tests check a restore against.

use std::path::Path;
use std::process::Command;

/// Whether trees `a` and `b` are the same (names, file contents, symbolic links' targets, not
/// followed): `Err` with `diff -r`'s report where they differ.
pub fn compare_trees(a: &Path, b: &Path) -> Result<(), String> {
    let out = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(a)
        .arg(b)
        .output()
        .expect("diff (diffutils) must be installed");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Asserts that trees `a` and `b` are the same, showing where they differ.
pub fn same_tree(a: &Path, b: &Path) {
    if let Err(diff) = compare_trees(a, b) {
        panic!("trees differ: {diff}");
    }
}
