//! Small durable files: written to a temporary name, fsynced, renamed over the old one, and
//! the directory fsynced, so a crash leaves either the old or the new content.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Replaces `path` with `bytes` atomically; with `durable` the new content survives a crash
/// once this returns.
pub fn replace(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    // A name of its own per call: a snapshot built and one installed at the same moment
    // must never write into each other's temporary file.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!("tmp{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if durable {
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
    }
    Ok(())
}

/// Reads `path`, or `None` when it does not exist.
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes the directory entries of `dir` (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing parents, and makes each creation durable by fsyncing the
/// directory that holds it (a crash must not forget a directory whose files were synced).
pub fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut cursor = Some(dir);
    while let Some(path) = cursor {
        if path.as_os_str().is_empty() || path.exists() {
            break;
        }
        missing.push(path);
        cursor = path.parent();
    }
    fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        let parent = created.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_replaces_of_one_file_never_share_a_temporary_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("snapshot.bin");
        let writers: Vec<_> = (0..8u8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let bytes = vec![i; 256 * 1024];
                    for _ in 0..5 {
                        replace(&path, &bytes, false).expect("replace");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("writer");
        }
        let bytes = fs::read(&path).expect("read");
        assert_eq!(bytes.len(), 256 * 1024, "one writer's whole content, never a mix");
        assert!(bytes.iter().all(|b| *b == bytes[0]), "one writer's whole content, never a mix");
        let names: Vec<_> =
            fs::read_dir(dir.path()).expect("list").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("snapshot.bin")], "no temporary file is left");
    }

    #[test]
    fn nested_directories_are_created() {
        let dir = tempfile::tempdir().expect("temp dir");
        let nested = dir.path().join("a").join("b").join("c");
        create_dir_durably(&nested).expect("create");
        assert!(nested.is_dir());
        create_dir_durably(&nested).expect("existing is fine");
    }
}
