//! `qtier profiles ...`: maintenance of the instance catalog.

use std::path::PathBuf;

use anyhow::Context;
use qtier_profiles::catalog::{BUILTIN_CATALOG_NAME, BUILTIN_CATALOG_TOML};
use qtier_profiles::prices::import_prices;

use crate::commands::write_new_file;

/// `qtier profiles ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ProfilesCommand {
    /// Refresh the catalog's on-demand prices from an AWS Price List offer file (JSON), offline,
    /// and print the updated catalog (or write it with --out).
    ImportPrices(ImportPricesArgs),
}

/// `qtier profiles import-prices`.
#[derive(Debug, clap::Args)]
pub struct ImportPricesArgs {
    /// The offer file (`.../offers/v1.0/aws/AmazonEC2/current/<region>/index.json`, or
    /// AmazonSageMaker's).
    #[arg(value_name = "FILE")]
    pub offer: PathBuf,
    /// The catalog to update (default: the built-in one).
    #[arg(long, value_name = "FILE")]
    pub catalog: Option<PathBuf>,
    /// Write the updated catalog to this file instead of printing it.
    #[arg(short, long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Replace the --out file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print the result as JSON (`as_of`, `updated`, `not_in_offer`, and `catalog_toml` unless
    /// written with --out).
    #[arg(long)]
    pub json: bool,
}

/// Runs `qtier profiles ...`.
pub fn run(command: ProfilesCommand) -> anyhow::Result<()> {
    match command {
        ProfilesCommand::ImportPrices(args) => import(args),
    }
}

fn import(args: ImportPricesArgs) -> anyhow::Result<()> {
    let (catalog_text, catalog_name) = match &args.catalog {
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("reading catalog {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (BUILTIN_CATALOG_TOML.to_string(), BUILTIN_CATALOG_NAME.to_string()),
    };
    let offer_name =
        args.offer.file_name().map_or_else(|| args.offer.display().to_string(), |n| n.to_string_lossy().into_owned());
    let offer =
        std::fs::File::open(&args.offer).with_context(|| format!("opening offer file {}", args.offer.display()))?;
    let result = import_prices(&catalog_text, &catalog_name, offer, &offer_name)?;
    if let Some(path) = &args.out {
        write_new_file(path, &result.catalog_toml, args.force)?;
    }
    if args.json {
        let mut value = serde_json::to_value(&result)?;
        if let (Some(path), Some(object)) = (&args.out, value.as_object_mut()) {
            object.remove("catalog_toml");
            object.insert("written".into(), path.display().to_string().into());
        }
        outln!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    // The summary goes to stderr when stdout carries the catalog.
    let summary = |line: String| {
        if args.out.is_some() {
            outln!("{line}");
        } else {
            eprintln!("{line}");
        }
    };
    for change in &result.updated {
        summary(format!("{}: ${} -> ${} per hour", change.instance, change.before, change.after));
    }
    summary(format!(
        "{} price{} set from {offer_name} (as of {}); not in the offer file, unchanged: {}",
        result.updated.len(),
        if result.updated.len() == 1 { "" } else { "s" },
        result.as_of,
        if result.not_in_offer.is_empty() { "none".to_string() } else { result.not_in_offer.join(", ") }
    ));
    match &args.out {
        Some(path) => outln!("wrote {}", path.display()),
        None => out!("{}", result.catalog_toml),
    }
    Ok(())
}
