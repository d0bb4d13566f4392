//! `qtier generate`: greedy decoding with a Llama-family decoder (float or int8 artifact),
//! printing the tokens and timings.

use std::path::PathBuf;

use anyhow::{Context, bail};
use qtier_models::llama::LlamaModel;
use qtier_models::{Int8Options, TextTokenizer};

/// `qtier generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// A Llama-family model or int8 artifact directory.
    pub model: PathBuf,
    /// Prompt token ids, comma-separated (`1,17,256`).
    #[arg(long, value_name = "IDS", required_unless_present = "prompt", conflicts_with = "prompt")]
    pub prompt_ids: Option<String>,
    /// Prompt text, tokenized with the directory's tokenizer.json.
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// Tokens to generate.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_new_tokens: usize,
    /// Run int8 layers as plain per-token W8A8, without outlier decomposition.
    #[arg(long)]
    pub plain_w8a8: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `qtier generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    let model = LlamaModel::load_with(&args.model, Int8Options { outlier_decomposition: !args.plain_w8a8 })
        .with_context(|| format!("loading {}", args.model.display()))?;
    let prompt: Vec<u32> = match (&args.prompt_ids, &args.prompt) {
        (Some(ids), _) => ids
            .split(',')
            .map(|id| id.trim().parse::<u32>().with_context(|| format!("--prompt-ids: `{id}` is not a token id")))
            .collect::<anyhow::Result<_>>()?,
        (None, Some(text)) => {
            let tokenizer = TextTokenizer::from_dir(&args.model, model.config().max_position_embeddings)
                .context("--prompt needs the model's tokenizer.json")?;
            tokenizer.encode_batch(&[text.as_str()])?.ids_of(0)
        }
        (None, None) => bail!("give --prompt-ids or --prompt"),
    };
    if prompt.is_empty() {
        bail!("the prompt has no tokens");
    }
    let mut cache = model.new_cache(prompt.len() + args.max_new_tokens - 1)?;
    let generation = model.generate(&prompt, args.max_new_tokens, &mut cache)?;
    let ttft_ms = generation.ttft_ns / 1e6;
    let tpot_ms = match generation.token_ns.len() {
        0 => None,
        n => Some(generation.token_ns.iter().sum::<f64>() / n as f64 / 1e6),
    };
    if args.json {
        let json = serde_json::json!({
            "model": args.model.display().to_string(),
            "weight_dtype": model.weight_dtype(),
            "threads": qtier_kernels::parallelism(),
            "prompt_ids": prompt,
            "tokens": generation.tokens,
            "prefill_ms": ttft_ms,
            "ms_per_output_token": tpot_ms,
            "token_ms": generation.token_ns.iter().map(|ns| ns / 1e6).collect::<Vec<_>>(),
        });
        outln!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        let ids: Vec<String> = generation.tokens.iter().map(ToString::to_string).collect();
        outln!("{}", ids.join(","));
        eprintln!(
            "{} ({}), {} threads: prompt {} tokens, prefill (time to first token) {ttft_ms:.2} ms, {} ms per output token over {} tokens",
            args.model.display(),
            model.weight_dtype(),
            qtier_kernels::parallelism(),
            prompt.len(),
            tpot_ms.map_or("-".to_string(), |ms| format!("{ms:.2}")),
            generation.token_ns.len()
        );
    }
    Ok(())
}
