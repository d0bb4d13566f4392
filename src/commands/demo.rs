//! `qtier demo`: the flow on the test model, with local defaults and no cloud account.

use anyhow::bail;
use qtier_quantize::report::REPORT_JSON;
use qtier_quantize::{LayerSelection, QuantizeOptions};

use crate::cli::DemoArgs;
use crate::commands::quantize::{print_report, quantize_with_progress};

/// Runs `qtier demo`: fetches all-MiniLM-L6-v2 and quantizes it into `<out>/<model>-w8a8`.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let model = crate::test_model::ensure()?;
    let output = args.out.join(format!("{}-w8a8", crate::test_model::MODEL_NAME));
    // The demo may be run again and again: it replaces an artifact it wrote itself (one holding a
    // qtier report), and refuses anything else unless --force.
    let is_previous_demo = output.join(REPORT_JSON).is_file();
    if output.exists() && !is_previous_demo && !args.force {
        bail!("{}: exists and is not a qtier artifact; pass --force to replace it", output.display());
    }
    let options = QuantizeOptions {
        input: model,
        output,
        selection: LayerSelection::default(),
        allow_nonfinite: false,
        force: true,
        durable: false,
    };
    let report = quantize_with_progress(&options, args.json)?;
    print_report(&report, args.json)
}
