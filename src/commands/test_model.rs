//! `qtier test-model`.

use crate::cli::TestModelArgs;

/// Runs `qtier test-model`: fetches and verifies the test model, prints its directory.
pub fn run(args: TestModelArgs) -> anyhow::Result<()> {
    let dir = crate::test_model::ensure()?;
    if args.json {
        outln!("{}", serde_json::json!({ "path": dir }));
    } else {
        outln!("{}", dir.display());
    }
    Ok(())
}
