//! One module per subcommand: each turns its clap arguments into a library call and prints the
//! result.

pub mod bench;
pub mod bench_server;
pub mod compare;
pub mod demo;
pub mod embed;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod k8s;
pub mod profiles;
pub mod publish;
pub mod quantize;
pub mod recommend;
pub mod run;
pub mod serve;
pub mod synth;
pub mod test_model;

/// Writes `bytes` to `path` through a temporary file beside it renamed into place (readers never
/// see half a file), refusing to replace an existing file unless `force`.
pub fn write_new_file(path: &std::path::Path, bytes: impl AsRef<[u8]>, force: bool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if path.exists() && !force {
        anyhow::bail!("{}: already exists; pass --force to replace it", path.display());
    }
    let name = path.file_name().with_context(|| format!("{}: not a file path", path.display()))?;
    let temporary = path.with_file_name(format!(".{}.qtier-partial-{}", name.to_string_lossy(), std::process::id()));
    std::fs::write(&temporary, bytes).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("renaming into {}", path.display())).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}
