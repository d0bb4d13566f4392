//! Read-only memory maps of checkpoint files: the crate's only `unsafe` code.
//!
//! Checkpoints are read through the page cache rather than into anonymous memory, and the pages
//! of a tensor are handed back to the kernel once it has been processed, so the resident set stays
//! near one tensor's size however large the checkpoint is.
#![allow(unsafe_code)]

use std::fs::File;
use std::path::Path;

use memmap2::{Advice, Mmap, UncheckedAdvice};

use crate::error::{QuantizeError, Result};

/// A whole file mapped read-only.
#[derive(Debug)]
pub(crate) struct MappedFile {
    map: Mmap,
}

impl MappedFile {
    /// Maps `path` read-only.
    pub(crate) fn open(path: &Path) -> Result<MappedFile> {
        let file = File::open(path).map_err(|e| QuantizeError::io(path, "open", e))?;
        // SAFETY: the map is read-only and private to this process. Another process truncating
        // the file while it is mapped would make reads fault (SIGBUS); that is the documented,
        // accepted risk of memory-mapping model files, shared with every safetensors loader.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| QuantizeError::io(path, "memory-map", e))?;
        // Tensors are read front to back; ask for aggressive read-ahead. Advice is only a hint,
        // so a refusal is not an error.
        let _ = map.advise(Advice::Sequential);
        Ok(MappedFile { map })
    }

    /// The file's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Drops the pages of `range` from this process's resident set; the page cache keeps them,
    /// and a later read faults them back in.
    pub(crate) fn release(&self, range: std::ops::Range<usize>) {
        if range.is_empty() || range.end > self.map.len() {
            return;
        }
        // SAFETY: MADV_DONTNEED on a read-only, file-backed private mapping discards only this
        // process's page-table entries; later reads see the file's unchanged contents again, so no
        // live reference observes different data.
        let _ = unsafe { self.map.unchecked_advise_range(UncheckedAdvice::DontNeed, range.start, range.len()) };
    }
}
