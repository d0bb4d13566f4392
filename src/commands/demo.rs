//! `qtier demo`: the flow on the test model, with local defaults and no cloud account.

use anyhow::{Context, bail};
use qtier_models::SentenceEncoder;
use qtier_models::eval::{DEV_SENTENCES, evaluate, lines};
use qtier_quantize::report::REPORT_JSON;
use qtier_quantize::{LayerSelection, QuantizeOptions};

use crate::cli::DemoArgs;
use crate::commands::eval::print_summary;
use crate::commands::quantize::{print_report, quantize_with_progress};

/// Runs `qtier demo`: fetches all-MiniLM-L6-v2, quantizes it into `<out>/<model>-w8a8`, and
/// evaluates the artifact against the float model on the development sentences.
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
        input: model.clone(),
        output: output.clone(),
        selection: LayerSelection::default(),
        allow_nonfinite: false,
        force: true,
        durable: false,
    };
    let report = quantize_with_progress(&options, args.json)?;
    let reference = SentenceEncoder::load(&model).with_context(|| format!("loading {}", model.display()))?;
    let candidate = SentenceEncoder::load(&output).with_context(|| format!("loading {}", output.display()))?;
    let eval = evaluate(&reference, &candidate, &lines(DEV_SENTENCES))?;
    if args.json {
        outln!("{}", serde_json::json!({ "quantize": report, "eval": eval }));
    } else {
        print_report(&report, false)?;
        print_summary(&eval);
    }
    Ok(())
}
