//! Refreshing the catalog's on-demand prices from an AWS Price List offer file, offline.
//!
//! An offer file (`https://pricing.us-east-1.amazonaws.com/offers/v1.0/aws/AmazonEC2/current/
//! <region>/index.json`, or `AmazonSageMaker`) lists `products` by SKU with their `attributes`
//! and, under `terms.OnDemand`, each SKU's offer terms with `priceDimensions` priced in
//! `pricePerUnit.USD`. A product is an instance's on-demand Linux price when its instance type
//! (`instanceType`, or `instanceName` in SageMaker files) is in the catalog, its region matches
//! (`regionCode`, or `location` where the file has no region codes) and, where the attribute is
//! present: `operatingSystem` Linux, `tenancy` Shared, `preInstalledSw` NA, `capacitystatus`
//! Used, and for SageMaker a hosting `component` ([`SAGEMAKER_HOSTING_COMPONENTS`]).
//! Several different hourly prices left for one instance are an error rather than a guess.
//!
//! The catalog is edited in place (comments and layout kept): each matched instance's price,
//! source (`AWS Price List offer file <name>`) and as-of date (the file's `publicationDate`).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use serde::{Deserialize, Serialize};
use toml_edit::{DocumentMut, value};

use crate::catalog::InstanceCatalog;
use crate::error::{ProfilesError, Result};

/// Attribute values a product must have, when it has the attribute, to be an on-demand Linux
/// price of a shared instance with no pre-installed software (EC2 offer files).
const EC2_FILTERS: [(&str, &str); 4] =
    [("operatingSystem", "Linux"), ("tenancy", "Shared"), ("preInstalledSw", "NA"), ("capacitystatus", "Used")];
/// `component` values of SageMaker products that price real-time inference hosting. From the
/// SageMaker offer file's layout as documented; not verified against a current file from this
/// sandbox, so an unexpected layout shows up as an ambiguity error, never as a wrong price.
pub const SAGEMAKER_HOSTING_COMPONENTS: [&str; 2] = ["Hosting", "RealTimeInference"];
/// Region code to the `location` name offer files use where they have no `regionCode`.
const REGION_LOCATIONS: [(&str, &str); 4] = [
    ("us-east-1", "US East (N. Virginia)"),
    ("us-east-2", "US East (Ohio)"),
    ("us-west-2", "US West (Oregon)"),
    ("eu-west-1", "EU (Ireland)"),
];

/// One instance's price change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PriceChange {
    /// The instance type.
    pub instance: String,
    /// The catalog's price before, USD per hour.
    pub before: f64,
    /// The offer file's price, USD per hour.
    pub after: f64,
}

/// The result of an import.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PriceImport {
    /// The updated catalog text (valid: it was parsed back).
    pub catalog_toml: String,
    /// The offer file's publication date (`YYYY-MM-DD`).
    pub as_of: String,
    /// Instances whose price was set from the offer file.
    pub updated: Vec<PriceChange>,
    /// Catalog instances the offer file has no matching price for (left unchanged).
    pub not_in_offer: Vec<String>,
}

/// The parts of an offer file qtier reads; everything else is skipped while parsing, so a large
/// regional file is not held in memory.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OfferFile {
    publication_date: Option<String>,
    products: Option<HashMap<String, Product>>,
    terms: Option<Terms>,
}

#[derive(Debug, Deserialize)]
struct Product {
    #[serde(default)]
    attributes: Attributes,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Attributes {
    instance_type: Option<String>,
    instance_name: Option<String>,
    region_code: Option<String>,
    location: Option<String>,
    operating_system: Option<String>,
    tenancy: Option<String>,
    pre_installed_sw: Option<String>,
    capacitystatus: Option<String>,
    component: Option<String>,
}

impl Attributes {
    fn get(&self, name: &str) -> Option<&str> {
        match name {
            "operatingSystem" => self.operating_system.as_deref(),
            "tenancy" => self.tenancy.as_deref(),
            "preInstalledSw" => self.pre_installed_sw.as_deref(),
            "capacitystatus" => self.capacitystatus.as_deref(),
            _ => None,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Terms {
    #[serde(rename = "OnDemand")]
    on_demand: Option<HashMap<String, HashMap<String, OfferTerm>>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OfferTerm {
    #[serde(default)]
    price_dimensions: HashMap<String, PriceDimension>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PriceDimension {
    unit: Option<String>,
    #[serde(default)]
    price_per_unit: HashMap<String, String>,
}

/// Reads prices for the catalog's instances from an offer file (`offer`, named `offer_name`)
/// and returns the catalog text with them written in. `catalog_toml` must be a valid catalog.
pub fn import_prices(
    catalog_toml: &str,
    catalog_name: &str,
    offer: impl Read,
    offer_name: &str,
) -> Result<PriceImport> {
    let catalog = InstanceCatalog::parse(catalog_toml, catalog_name)?;
    let error = |problem: String| ProfilesError::OfferFile { file: offer_name.into(), problem };
    let offer: OfferFile = serde_json::from_reader(std::io::BufReader::new(offer))
        .map_err(|e| error(format!("not an offer file: {e}")))?;
    let publication = offer.publication_date.ok_or_else(|| error("no `publicationDate`".into()))?;
    let as_of = publication.get(..10).unwrap_or(&publication).to_string();
    crate::values::IsoDate::try_from(as_of.clone()).map_err(|e| error(format!("publicationDate: {e}")))?;
    let products = offer.products.ok_or_else(|| error("no `products` object".into()))?;
    let on_demand = offer.terms.and_then(|t| t.on_demand).ok_or_else(|| error("no `terms.OnDemand` object".into()))?;
    let region = catalog.header.region.as_str();
    let location = REGION_LOCATIONS.iter().find(|(code, _)| *code == region).map(|(_, name)| *name);

    // instance type -> (price, sku) of every matching hourly price
    let mut found: BTreeMap<String, Vec<(f64, String)>> = BTreeMap::new();
    for (sku, product) in &products {
        let attributes = &product.attributes;
        let Some(instance) = attributes.instance_type.as_deref().or(attributes.instance_name.as_deref()) else {
            continue;
        };
        if catalog.get(instance).is_none() {
            continue;
        }
        let region_matches = match attributes.region_code.as_deref() {
            Some(code) => code == region,
            None => location.is_some() && attributes.location.as_deref() == location,
        };
        let filters_pass = EC2_FILTERS.iter().all(|(name, wanted)| attributes.get(name).is_none_or(|v| v == *wanted))
            && attributes.component.as_deref().is_none_or(|c| SAGEMAKER_HOSTING_COMPONENTS.contains(&c));
        if !region_matches || !filters_pass {
            continue;
        }
        let Some(terms) = on_demand.get(sku) else { continue };
        for term in terms.values() {
            for dimension in term.price_dimensions.values() {
                let hourly = dimension.unit.as_deref().is_none_or(|u| u.eq_ignore_ascii_case("hrs"));
                let usd = dimension.price_per_unit.get("USD").and_then(|s| s.parse::<f64>().ok());
                if let (true, Some(usd)) = (hourly, usd) {
                    found.entry(instance.to_string()).or_default().push((usd, sku.clone()));
                }
            }
        }
    }
    for prices in found.values_mut() {
        prices.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.total_cmp(&b.0)));
    }

    let mut document: DocumentMut = catalog_toml.parse().map_err(|e: toml_edit::TomlError| ProfilesError::Toml {
        file: catalog_name.into(),
        line: None,
        message: e.to_string(),
    })?;
    let instances = document.get_mut("instance").and_then(|item| item.as_array_of_tables_mut()).ok_or_else(|| {
        ProfilesError::Toml { file: catalog_name.into(), line: None, message: "no [[instance]] tables".into() }
    })?;
    let mut updated = Vec::new();
    let mut not_in_offer = Vec::new();
    for table in instances.iter_mut() {
        let Some(name) = table.get("name").and_then(|n| n.as_str()).map(str::to_string) else { continue };
        let Some(prices) = found.get(&name) else {
            not_in_offer.push(name);
            continue;
        };
        let price = prices[0].0;
        if prices.iter().any(|(p, _)| (p - price).abs() > 1e-12) {
            let listed: Vec<String> = prices.iter().map(|(p, sku)| format!("{p} (sku {sku})")).collect();
            return Err(error(format!("{name}: several on-demand hourly prices match: {}", listed.join(", "))));
        }
        if !(price > 0.0 && price.is_finite()) {
            return Err(error(format!("{name}: price {price} is not positive (sku {})", prices[0].1)));
        }
        let before = catalog.get(&name).map(|i| i.price.on_demand_usd_per_hour.get()).unwrap_or(f64::NAN);
        let entry = &mut table["price"];
        entry["on_demand_usd_per_hour"] = value(price);
        entry["source"] = value(format!("AWS Price List offer file {offer_name}"));
        entry["as_of"] = value(as_of.clone());
        entry["note"] = value(format!("Imported by qtier profiles import-prices (publicationDate {publication})."));
        updated.push(PriceChange { instance: name, before, after: price });
    }
    let catalog_toml = document.to_string();
    InstanceCatalog::parse(&catalog_toml, catalog_name)?;
    Ok(PriceImport { catalog_toml, as_of, updated, not_in_offer })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A tiny offer file: c5.large in us-east-1 on Linux (the one to take), the same type on
    /// Windows, in another region and as an unused capacity reservation (all to skip), and a
    /// SageMaker hosting price.
    fn offer() -> String {
        let product = |instance: &str, region: &str, os: &str, capacity: &str| {
            json!({"sku": "x", "productFamily": "Compute Instance", "attributes": {
                "instanceType": instance, "regionCode": region, "location": "US East (N. Virginia)",
                "operatingSystem": os, "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": capacity}})
        };
        let term = |usd: &str| {
            json!({"T1": {"offerTermCode": "JRTCKXETXF", "priceDimensions": {
            "D1": {"unit": "Hrs", "pricePerUnit": {"USD": usd}, "description": "per hour"}}}})
        };
        json!({
            "formatVersion": "v1.0",
            "publicationDate": "2026-12-01T18:20:00Z",
            "products": {
                "SKU1": product("c5.large", "us-east-1", "Linux", "Used"),
                "SKU2": product("c5.large", "us-east-1", "Windows", "Used"),
                "SKU3": product("c5.large", "eu-west-1", "Linux", "Used"),
                "SKU4": product("c5.large", "us-east-1", "Linux", "UnusedCapacityReservation"),
                "SKU5": {"attributes": {"instanceName": "ml.g5.2xlarge", "regionCode": "us-east-1", "component": "Hosting"}},
                "SKU6": {"attributes": {"instanceName": "ml.g5.2xlarge", "regionCode": "us-east-1", "component": "Training"}},
            },
            "terms": {"OnDemand": {
                "SKU1": term("0.0900000000"),
                "SKU2": term("0.1820000000"),
                "SKU3": term("0.0960000000"),
                "SKU4": term("0.0000000000"),
                "SKU5": term("1.5500000000"),
                "SKU6": term("1.6000000000"),
            }}
        })
        .to_string()
    }

    #[test]
    fn an_offer_file_refreshes_matching_prices_with_source_and_date() {
        let builtin = crate::catalog::BUILTIN_CATALOG_TOML;
        let result = import_prices(builtin, "instances.toml", offer().as_bytes(), "index.json").unwrap();
        assert_eq!(result.as_of, "2026-12-01");
        let changed: Vec<(&str, f64)> = result.updated.iter().map(|c| (c.instance.as_str(), c.after)).collect();
        assert_eq!(changed, [("c5.large", 0.09), ("ml.g5.2xlarge", 1.55)]);
        assert_eq!(result.updated[0].before, 0.085);
        assert!(result.not_in_offer.contains(&"c5.xlarge".to_string()));
        let catalog = InstanceCatalog::parse(&result.catalog_toml, "new.toml").unwrap();
        let c5 = catalog.get("c5.large").unwrap();
        assert_eq!(c5.price.on_demand_usd_per_hour.get(), 0.09);
        assert_eq!(c5.price.source.as_str(), "AWS Price List offer file index.json");
        assert_eq!(c5.price.as_of.as_str(), "2026-12-01");
        let untouched = catalog.get("c5.xlarge").unwrap();
        assert_eq!(
            (untouched.price.on_demand_usd_per_hour.get(), untouched.price.as_of.as_str()),
            (0.17, "2026-11-30")
        );
        // Comments and the rest of the file are kept.
        assert!(result.catalog_toml.contains("# qtier instance catalog"));
        assert_eq!(result.catalog_toml.lines().count(), builtin.lines().count());
    }

    #[test]
    fn ambiguous_or_malformed_offer_files_are_errors() {
        let ambiguous = offer().replace("\"Windows\"", "\"Linux\"");
        let error =
            import_prices(crate::catalog::BUILTIN_CATALOG_TOML, "c.toml", ambiguous.as_bytes(), "o.json").unwrap_err();
        assert!(error.to_string().contains("c5.large: several on-demand hourly prices"), "{error}");
        let error =
            import_prices(crate::catalog::BUILTIN_CATALOG_TOML, "c.toml", "{\"products\": {}}".as_bytes(), "o.json")
                .unwrap_err();
        assert!(error.to_string().contains("publicationDate"), "{error}");
        let error =
            import_prices(crate::catalog::BUILTIN_CATALOG_TOML, "c.toml", "[".as_bytes(), "o.json").unwrap_err();
        assert!(error.to_string().starts_with("offer file o.json: not an offer file"), "{error}");
    }
}
