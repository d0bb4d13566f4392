//! Output directories that appear whole or not at all.
//!
//! Everything is written into a hidden staging directory beside the target
//! (`.<name>.qtier-partial-<pid>`), synced, and renamed into place at the end. A run that fails
//! removes its staging directory; one that is killed leaves it behind under a name no tool reads,
//! and the next run into the same target removes it once its process is gone.

use std::path::{Path, PathBuf};

use crate::error::{QuantizeError, Result};

/// Marks staging directories: `.<target name>.qtier-partial-<pid>`.
const PARTIAL_MARKER: &str = ".qtier-partial-";
/// Marks a replaced output on its way out: `.<target name>.qtier-replaced-<pid>`.
const REPLACED_MARKER: &str = ".qtier-replaced-";

/// A staging directory that becomes `target` on [`StagedDir::commit`].
#[derive(Debug)]
pub struct StagedDir {
    staging: PathBuf,
    target: PathBuf,
    force: bool,
    committed: bool,
}

impl StagedDir {
    /// Refuses an existing `target` unless `force`, removes stale staging directories of dead
    /// runs, and creates a fresh staging directory beside `target`.
    pub fn create(target: &Path, force: bool) -> Result<StagedDir> {
        if target.exists() && !force {
            return Err(QuantizeError::OutputExists { path: target.to_path_buf() });
        }
        if target.exists() && !target.is_dir() {
            return Err(QuantizeError::InvalidOptions(format!(
                "{}: exists and is not a directory; an artifact is a directory, so remove it first",
                target.display()
            )));
        }
        let name = target
            .file_name()
            .ok_or_else(|| QuantizeError::InvalidOptions(format!("{}: not a usable output path", target.display())))?
            .to_string_lossy()
            .into_owned();
        let parent = match target.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| QuantizeError::io(&parent, "create directory", e))?;
        remove_stale_staging(&parent, &name);
        let staging = parent.join(format!(".{name}{PARTIAL_MARKER}{}", std::process::id()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| QuantizeError::io(&staging, "remove", e))?;
        }
        std::fs::create_dir(&staging).map_err(|e| QuantizeError::io(&staging, "create directory", e))?;
        Ok(StagedDir { staging, target: target.to_path_buf(), force, committed: false })
    }

    /// The staging directory to write into.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Renames the staging directory to the target, replacing an existing target only if `force`
    /// was given. With `durable`, every file is flushed to disk first, so that not even a power
    /// loss can leave a complete-looking artifact with missing data.
    pub fn commit(mut self, durable: bool) -> Result<()> {
        if durable {
            sync_tree(&self.staging)?;
        }
        let replaced = if self.target.exists() {
            if !self.force {
                return Err(QuantizeError::OutputExists { path: self.target.clone() });
            }
            let name = self.target.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let aside = self.staging.with_file_name(format!(".{name}{REPLACED_MARKER}{}", std::process::id()));
            std::fs::rename(&self.target, &aside).map_err(|e| QuantizeError::io(&self.target, "move aside", e))?;
            Some(aside)
        } else {
            None
        };
        std::fs::rename(&self.staging, &self.target)
            .map_err(|e| QuantizeError::io(&self.target, "rename into place", e))?;
        self.committed = true;
        if let Some(parent) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        if let Some(aside) = replaced {
            std::fs::remove_dir_all(&aside).map_err(|e| QuantizeError::io(&aside, "remove replaced output", e))?;
        }
        Ok(())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// Flushes every file below `dir`, then `dir` itself.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| QuantizeError::io(dir, "list", e))? {
        let path = entry.map_err(|e| QuantizeError::io(dir, "list", e))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(|e| QuantizeError::io(&path, "sync", e))?;
        }
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| QuantizeError::io(dir, "sync", e))
}

/// Removes `.<name>.qtier-partial-<pid>` and `.<name>.qtier-replaced-<pid>` directories in
/// `parent` whose process no longer runs. Best effort: a failure leaves them for later.
fn remove_stale_staging(parent: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let pid = [PARTIAL_MARKER, REPLACED_MARKER]
            .iter()
            .find_map(|marker| file_name.strip_prefix(&format!(".{name}{marker}")))
            .and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| pid != std::process::id() && !process_is_running(pid)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// True when a process `pid` exists; where that cannot be told (no `/proc`), assumes it does, so
/// nothing that might be in use is removed.
fn process_is_running(pid: u32) -> bool {
    if !Path::new("/proc/self").exists() {
        return true;
    }
    Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_target_is_refused_without_force_and_replaced_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("old"), "old").unwrap();
        assert!(matches!(StagedDir::create(&target, false), Err(QuantizeError::OutputExists { .. })));
        let staged = StagedDir::create(&target, true).unwrap();
        std::fs::write(staged.path().join("new"), "new").unwrap();
        staged.commit(true).unwrap();
        assert!(target.join("new").exists() && !target.join("old").exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no staging or replaced directory left");
    }

    #[test]
    fn dropped_staging_leaves_nothing_and_stale_staging_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        // A pid far above Linux's pid_max cannot be running.
        let stale = dir.path().join(format!(".out{PARTIAL_MARKER}4294967295"));
        std::fs::create_dir(&stale).unwrap();
        let staged = StagedDir::create(&target, false).unwrap();
        assert!(!stale.exists());
        drop(staged);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
