//! What the unit tests of this crate share.

use std::path::{Path, PathBuf};

/// A scratch directory removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty scratch directory `vtpga-ingest-{module}-{pid}-{name}` in the
/// temporary directory.
pub(crate) fn tmpdir(module: &str, name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!(
        "vtpga-ingest-{module}-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}
