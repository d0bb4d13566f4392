//! `qtier recommend` on a report measured on this host, and `qtier profiles import-prices`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::*;

/// Quantizes the test model and benchmarks it on this host (instance type unknown); returns the
/// saved report.
fn host_report(dir: &Path) -> PathBuf {
    let int8 = dir.join("int8");
    run_ok(&["quantize", arg(test_model()), "-o", arg(&int8)]);
    let output = qtier()
        .args(["--threads", "2", "bench", "model", arg(&int8)])
        .args(["--batch", "1", "--seq", "32", "--min-seconds", "0.2", "--tail", "90", "--json"])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let path = dir.join("host-report.json");
    std::fs::write(&path, &output.stdout).unwrap();
    path
}

/// Checks that `xml` is well-formed in the way the HTML export promises: every element closed
/// in order, attribute quotes balanced, no stray `<`, and `&` only in the predefined entities.
fn assert_well_formed(xml: &str) {
    let check_text = |text: &str| {
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&#"].iter().any(|e| entity.starts_with(e)),
                "bare & in {:?}",
                &entity[..entity.len().min(20)]
            );
        }
    };
    let mut stack: Vec<String> = Vec::new();
    let mut rest = xml;
    while let Some(open) = rest.find('<') {
        check_text(&rest[..open]);
        let close = open + rest[open..].find('>').expect("unclosed tag");
        let tag = &rest[open + 1..close];
        assert!(!tag.contains('<'), "`<` inside tag {tag:?}");
        assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes in {tag:?}");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name.trim()), "mismatched </{name}>");
        } else if !tag.ends_with('/') {
            stack.push(tag.split_whitespace().next().expect("tag name").to_string());
        }
        rest = &rest[close + 1..];
    }
    check_text(rest);
    assert!(stack.is_empty(), "unclosed elements: {stack:?}");
}

#[test]
fn recommend_projects_every_tier_from_this_hosts_report_and_writes_three_formats() {
    let dir = tempfile::tempdir().unwrap();
    let report = host_report(dir.path());
    let out = dir.path().join("recommendation");

    let stdout = run_ok(&["recommend", arg(&report), "--allow-projected", "--out", arg(&out)]);
    for tier in ["gold (real-time)", "silver (interactive)", "bronze (async)"] {
        assert!(stdout.contains(tier), "{tier} missing:\n{stdout}");
    }
    assert!(stdout.contains("PROJECTED (not measured)"), "{stdout}");
    assert!(stdout.contains("not evaluated"), "{stdout}");
    assert_eq!(entries(&out), ["recommendation.html", "recommendation.json", "recommendation.md"]);

    let json: Value = serde_json::from_str(&std::fs::read_to_string(out.join("recommendation.json")).unwrap()).unwrap();
    assert!(json["reports"][0]["instance_type"].is_null(), "this host is never taken for an EC2 type");
    let bases: Vec<&str> = json["latencies"].as_array().unwrap().iter().map(|l| l["basis"].as_str().unwrap()).collect();
    assert!(bases.iter().all(|b| *b != "measured"), "{bases:?}");
    assert!(bases.contains(&"projected"), "{bases:?}");
    let tiers = json["tiers"].as_array().unwrap();
    assert_eq!(tiers.len(), 3);
    for tier in tiers {
        let summary = tier["summary"].as_str().unwrap();
        match tier["chosen"].as_str() {
            Some(chosen) => {
                let candidate =
                    tier["candidates"].as_array().unwrap().iter().find(|c| c["instance"] == chosen).unwrap();
                assert_eq!(candidate["basis"], "projected", "{summary}");
                assert_eq!(candidate["verdict"], "chosen");
            }
            None => assert!(summary.contains("no instance meets this tier"), "{summary}"),
        }
    }
    // A MiniLM request of 32 tokens is far inside bronze's 10 s on any VNNI type.
    assert!(tiers[2]["chosen"].is_string(), "bronze: {}", tiers[2]["summary"]);
    assert_eq!(tiers[2]["candidates"][0]["purchase"], "spot");

    let markdown = std::fs::read_to_string(out.join("recommendation.md")).unwrap();
    assert!(markdown.contains("**Projected figures are not measurements.**"));
    assert_eq!(markdown.matches("### Projected (not measured)").count(), 3);
    assert_eq!(markdown.matches("### Measured").count(), 3);
    assert!(markdown.contains("No instance type of the catalog was measured."));

    let html = std::fs::read_to_string(out.join("recommendation.html")).unwrap();
    let body = html.strip_prefix("<!DOCTYPE html>\n").expect("doctype");
    assert_well_formed(body);
    let svg = &body[body.find("<svg").unwrap()..body.find("</svg>").unwrap() + "</svg>".len()];
    assert_well_formed(svg);
    assert_eq!(svg.matches("<g class=\"sla\">").count(), 3);
    assert!(svg.contains("<g class=\"projected\">") && !svg.contains("<g class=\"measured\">"));
    let chosen = tiers.iter().filter(|t| t["chosen"].is_string()).count();
    assert_eq!(svg.matches("<g class=\"chosen\">").count(), chosen);

    // Existing files are refused without --force, and nothing is changed.
    let before = std::fs::read(out.join("recommendation.json")).unwrap();
    let error = run_err(&["recommend", arg(&report), "--allow-projected", "--out", arg(&out)]);
    assert!(error.contains("already exists; pass --force"), "{error}");
    assert_eq!(std::fs::read(out.join("recommendation.json")).unwrap(), before);
    run_ok(&["recommend", arg(&report), "--allow-projected", "--out", arg(&out), "--force"]);
    assert_eq!(entries(&out).len(), 3, "no temporary files left behind");

    // Without --allow-projected no tier is met by a projection; --json prints the same layout.
    let stdout = run_ok(&["recommend", arg(&report), "--json", "--qps", "gold=50"]);
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["tiers"][0]["required_qps"], 50.0);
    for tier in json["tiers"].as_array().unwrap() {
        assert!(tier["chosen"].is_null());
        let miss = tier["closest_miss"].as_str().unwrap();
        let candidate = tier["candidates"].as_array().unwrap().iter().find(|c| c["instance"] == miss).unwrap();
        let reasons: Vec<&str> = candidate["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
        assert!(reasons.iter().any(|r| r.contains("--allow-projected")), "{reasons:?}");
    }
}

#[test]
fn catalog_and_tier_errors_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.toml");
    let builtin = run_ok(&["profiles", "import-prices", arg(&write_offer(dir.path(), "us-east-1"))]);
    let broken = builtin.replacen("on_demand_usd_per_hour = 0.17", "on_demand_usd_per_hour = -0.17", 1);
    let line = broken.lines().position(|l| l.contains("-0.17")).unwrap() + 1;
    std::fs::write(&catalog, broken).unwrap();
    let error = run_err(&["recommend", "missing.json", "--catalog", arg(&catalog)]);
    assert!(error.contains(&format!("line {line}")) && error.contains("greater than zero"), "{error}");

    let tiers = dir.path().join("tiers.toml");
    std::fs::write(&tiers, "[[tier]]\nname = \"gold\"\nkind = \"real-time\"\nspot = \"sometimes\"\n").unwrap();
    let error = run_err(&["recommend", "missing.json", "--tiers", arg(&tiers)]);
    assert!(error.contains("tiers.toml") && error.contains("line 4") && error.contains("sometimes"), "{error}");

    let error = run_err(&["recommend", "missing.json", "--qps", "platinum=5"]);
    assert!(error.contains("no tier named `platinum`"), "{error}");
}

/// A tiny AWS Price List offer file: c5.xlarge on Linux in `region`, and the same on Windows.
fn write_offer(dir: &Path, region: &str) -> PathBuf {
    let product = |os: &str| {
        serde_json::json!({"attributes": {"instanceType": "c5.xlarge", "regionCode": region,
            "operatingSystem": os, "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}})
    };
    let term =
        |usd: &str| serde_json::json!({"T": {"priceDimensions": {"D": {"unit": "Hrs", "pricePerUnit": {"USD": usd}}}}});
    let offer = serde_json::json!({
        "formatVersion": "v1.0",
        "publicationDate": "2026-12-02T10:00:00Z",
        "products": {"LINUX": product("Linux"), "WINDOWS": product("Windows")},
        "terms": {"OnDemand": {"LINUX": term("0.1710000000"), "WINDOWS": term("0.3550000000")}}
    });
    let path = dir.join(format!("offer-{region}.json"));
    std::fs::write(&path, offer.to_string()).unwrap();
    path
}

#[test]
fn import_prices_rewrites_matching_prices_with_the_offer_files_source_and_date() {
    let dir = tempfile::tempdir().unwrap();
    let offer = write_offer(dir.path(), "us-east-1");
    let printed = run_ok(&["profiles", "import-prices", arg(&offer)]);
    assert!(printed.contains("on_demand_usd_per_hour = 0.171"), "{printed}");
    assert!(printed.contains("source = \"AWS Price List offer file offer-us-east-1.json\""));
    assert!(printed.contains("as_of = \"2026-12-02\""));
    assert_eq!(printed.matches("offer file offer-us-east-1.json").count(), 1, "only c5.xlarge changes");

    let catalog = dir.path().join("instances.toml");
    let stdout = run_ok(&["profiles", "import-prices", arg(&offer), "--out", arg(&catalog)]);
    assert!(stdout.contains("c5.xlarge: $0.17 -> $0.171 per hour"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&catalog).unwrap(), printed);
    let error = run_err(&["profiles", "import-prices", arg(&offer), "--out", arg(&catalog)]);
    assert!(error.contains("already exists"), "{error}");

    let json: Value = serde_json::from_str(&run_ok(&["profiles", "import-prices", arg(&offer), "--json"])).unwrap();
    assert_eq!(json["as_of"], "2026-12-02");
    assert_eq!(json["updated"][0]["instance"], "c5.xlarge");
    assert_eq!(json["updated"][0]["after"], 0.171);
    assert_eq!(json["catalog_toml"].as_str().unwrap(), printed);

    // The written catalog is accepted by recommend (the catalog parses before reports are read).
    let error = run_err(&["recommend", "missing.json", "--catalog", arg(&catalog)]);
    assert!(error.contains("missing.json"), "{error}");

    // A file for another region matches nothing.
    let other = write_offer(dir.path(), "eu-west-1");
    let output = qtier().args(["profiles", "import-prices", arg(&other)]).output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("0 prices set"));
}
