//! `qtier embed`.

use anyhow::Context;
use qtier_models::SentenceEncoder;
use qtier_models::eval::lines;

use crate::cli::EmbedArgs;

/// Runs `qtier embed`.
pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.texts).with_context(|| format!("reading {}", args.texts.display()))?;
    let texts = lines(&text);
    if texts.is_empty() {
        anyhow::bail!("{}: no texts (one per line expected)", args.texts.display());
    }
    let encoder = SentenceEncoder::load(&args.model).with_context(|| format!("loading {}", args.model.display()))?;
    let embeddings = encoder.embed(&texts)?;
    if args.json {
        let json = serde_json::json!({
            "model": args.model,
            "int8": encoder.is_int8(),
            "dimensions": embeddings.first().map_or(0, Vec::len),
            "embeddings": embeddings,
        });
        outln!("{json}");
    } else {
        for (text, embedding) in texts.iter().zip(&embeddings) {
            let head: Vec<String> = embedding.iter().take(4).map(|v| format!("{v:+.5}")).collect();
            outln!("[{} ... ({} dims)]  {text}", head.join(", "), embedding.len());
        }
    }
    Ok(())
}
