//! `qtier demo`: `qtier run` on the test model, publishing to a local store, with no cloud
//! account.

use std::path::Path;

use crate::cli::DemoArgs;
use crate::commands::run::{print_summary, run_flow};

/// Runs `qtier demo`: fetches all-MiniLM-L6-v2 and runs the whole flow on it (quantize, eval,
/// bench on this host, recommend, publish to the local store `--out`).
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let model = crate::test_model::ensure()?;
    let name = format!("{}-w8a8", crate::test_model::MODEL_NAME);
    let work_dir = args.work_dir.clone().unwrap_or_else(|| Path::new("qtier-work").join(&name));
    let mut flow = args.flow.clone();
    // This host is not an instance of the catalog (unless told otherwise), so only projections
    // from its measurement can meet a tier; the recommendation labels them as projected.
    flow.allow_projected = true;
    let store = args.out.display().to_string();
    let summary = run_flow(&model, &name, &work_dir, &store, &flow, &args.upload, args.force, args.json)?;
    print_summary(&summary, args.json)
}
