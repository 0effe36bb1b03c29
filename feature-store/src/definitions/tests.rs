//! Tests of the definition format: the example file against the model's training
//! column order, and one test per kind of problem, each checking that the message
//! names the file and the key path.

use std::path::Path;
use std::time::Duration;

use super::*;

const FILE: &str = "defs/test_features.toml";

/// A small valid file every problem test edits in one place.
const BASE: &str = r#"
[[entity]]
name = "customer"
keys = ["customer_id"]

[[static_view]]
name = "profile"
entity = "customer"
refresh_job = "profile_daily"
max_age = "36h"

[[static_view.feature]]
name = "age_days"
type = "int64"
default = 1

[[static_view.feature]]
name = "country"
type = "string"
default = "unknown"

[[dynamic_view]]
name = "activity"
entity = "customer"
ttl = "48h"
max_age = "24h"

[[dynamic_view.feature]]
name = "txn_count_1h"
type = "int64"
default = 0
aggregate = { function = "count", window = "1h", of = "transaction_id" }

[[dynamic_view.feature]]
name = "amount_mean_1h"
type = "float32"
default = 0
aggregate = { function = "mean", window = "1h", of = "amount" }

[[request_feature]]
name = "amount"
type = "float64"
required = true

[[request_feature]]
name = "card_present"
type = "bool"
default = false

[[model]]
name = "scorer"
input = "features"
dtype = "FP32"
features = ["profile.age_days", "activity.txn_count_1h", "activity.amount_mean_1h", "request.amount", "request.card_present"]
"#;

fn parse(text: &str) -> Result<FeatureDefinitions, DefinitionsError> {
    FeatureDefinitions::parse(text, Path::new(FILE))
}

/// BASE with the first `from` replaced by `to`; `from` must be there, so a test
/// cannot pass on an edit that did nothing.
fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "BASE has no {from:?}");
    BASE.replacen(from, to, 1)
}

/// Asserts that `text` is refused at `key` with a message naming the file and the
/// key, and returns the problem.
fn refused_at(text: &str, key: &str) -> DefinitionProblem {
    let err = parse(text).expect_err("the definitions should be refused");
    let message = err.to_string();
    assert!(message.contains(FILE), "{message} should name the file");
    assert!(
        message.contains(&format!("`{key}`")),
        "{message} should name the key {key}"
    );
    assert_eq!(err.key(), Some(key), "{message}");
    err.problem().cloned().expect("an Invalid error")
}

fn parse_error(text: &str) -> String {
    match parse(text) {
        Err(err @ DefinitionsError::Parse { .. }) => err.to_string(),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// The example file.

fn example() -> FeatureDefinitions {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("definitions/fraud.toml");
    FeatureDefinitions::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn example_columns_follow_the_training_order() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../model-server/training/reference/feature_names.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let groups: serde_json::Value = serde_json::from_str(&text).unwrap();
    let names = |group: &str| -> Vec<String> {
        groups[group]
            .as_array()
            .unwrap_or_else(|| panic!("{group} missing in {}", path.display()))
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect()
    };
    let (static_names, dynamic_names, request_names) =
        (names("static"), names("dynamic"), names("request"));
    assert_eq!(
        static_names.len() + dynamic_names.len() + request_names.len(),
        15
    );

    let defs = example();
    let model = defs.model("fraud_detector").unwrap();
    let input = model.input();
    assert_eq!(input.name(), "features");
    assert_eq!(input.dtype(), InputDtype::Fp32);
    let columns: Vec<&str> = input.columns().iter().map(|c| c.name.as_str()).collect();
    let expected: Vec<&str> = static_names
        .iter()
        .chain(&dynamic_names)
        .chain(&request_names)
        .map(String::as_str)
        .collect();
    assert_eq!(columns, expected);

    // Each group comes from the right kind of source.
    for (i, column) in input.columns().iter().enumerate() {
        let expected_source = if i < 5 {
            ColumnSource::StaticView("customer_profile".into())
        } else if i < 10 {
            ColumnSource::DynamicView("customer_activity".into())
        } else {
            ColumnSource::Request
        };
        assert_eq!(column.source, expected_source, "column {i} {}", column.name);
    }
}

#[test]
fn example_lookups() {
    let defs = example();
    let model = defs.model("fraud_detector").unwrap();
    assert_eq!(model.entities(), ["customer"]);
    assert_eq!(model.static_views(), ["customer_profile"]);
    assert_eq!(model.dynamic_views(), ["customer_activity"]);
    assert_eq!(defs.entity("customer").unwrap().keys, ["customer_id"]);

    let profile = defs.view("customer_profile").unwrap();
    assert_eq!(profile.max_age, Duration::from_secs(36 * 3600));
    let job = profile.refresh_job().unwrap();
    assert_eq!(job.as_str(), "customer_profile_daily");
    assert_eq!(defs.refresh_jobs(), [job]);
    let loaded: Vec<&str> = defs
        .views_refreshed_by("customer_profile_daily")
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(loaded, ["customer_profile"]);

    let activity = defs.view("customer_activity").unwrap();
    assert_eq!(activity.ttl(), Some(Duration::from_secs(48 * 3600)));
    let count = activity.feature("txn_count_1h").unwrap();
    assert_eq!(
        count.aggregate,
        Some(Aggregate {
            function: AggregateFunction::Count,
            window: Duration::from_secs(3600),
            of: "transaction_id".into(),
        })
    );

    let input = model.input();
    assert_eq!(input.width(), 15);
    assert_eq!(
        input.column_index("customer_profile.chargeback_count_1y"),
        Some(3)
    );
    assert_eq!(input.column_index("request.amount"), Some(10));
    assert_eq!(input.column_index_by_name("hour_of_day"), Some(13));
    assert_eq!(input.column_index("request.nope"), None);
    let from_activity: Vec<usize> = input
        .columns_from_view("customer_activity")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(from_activity, [5, 6, 7, 8, 9]);

    let row = input.default_row();
    assert_eq!(row.len(), 15);
    assert_eq!(row[..5], [1.0, 45.0, 0.0, 0.0, 0.18]);
    assert_eq!(row[5..10], [0.0, 0.0, 0.0, 0.0, 1440.0]);
    // amount, is_card_present and hour_of_day are required: no default, NaN.
    let required: Vec<usize> = (10..15).filter(|&i| row[i].is_nan()).collect();
    assert_eq!(required, [10, 12, 13]);
    assert_eq!(row[11], 0.21);
    assert_eq!(row[14], 10.0);
    assert!(defs.request_feature("amount").unwrap().is_required());
}

#[test]
fn base_is_valid() {
    let defs = parse(BASE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(defs.source(), Path::new(FILE));
    assert_eq!(defs.static_views().count(), 1);
    assert_eq!(defs.dynamic_views().count(), 1);
    let country = defs.view("profile").unwrap().feature("country").unwrap();
    assert_eq!(country.default, FeatureValue::String("unknown".into()));
    // A whole number is accepted as a float default.
    let mean = defs
        .view("activity")
        .unwrap()
        .feature("amount_mean_1h")
        .unwrap();
    assert_eq!(mean.default, FeatureValue::Float32(0.0));
    let input = defs.model("scorer").unwrap().input();
    assert_eq!(input.columns()[4].feature_type, FeatureType::Bool);
    assert_eq!(input.columns()[4].default, Some(0.0));
    assert_eq!(input.columns()[3].default, None);
}

// ---------------------------------------------------------------------------
// Reading and parsing.

#[test]
fn missing_file_names_the_file() {
    let err = FeatureDefinitions::load(Path::new("/nonexistent/features.toml")).unwrap_err();
    assert!(matches!(err, DefinitionsError::Read { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/features.toml"),
        "{err}"
    );
}

#[test]
fn syntax_error_keeps_line_and_column() {
    let text = edit("max_age = \"36h\"", "max_age = 36h");
    let message = parse_error(&text);
    assert!(message.contains(FILE), "{message}");
    assert!(message.contains("line 10, column"), "{message}");
}

#[test]
fn unknown_key_is_refused_with_its_line() {
    let text = edit("ttl = \"48h\"", "ttl = \"48h\"\nrefresh_job = \"x\"");
    let message = parse_error(&text);
    assert!(message.contains(FILE), "{message}");
    assert!(message.contains("refresh_job"), "{message}");
    assert!(message.contains("line 26"), "{message}");
}

#[test]
fn unknown_type_function_and_dtype_are_parse_errors() {
    let cases = [
        (edit("type = \"int64\"", "type = \"integer\""), "integer"),
        (edit("function = \"count\"", "function = \"p99\""), "p99"),
        (edit("dtype = \"FP32\"", "dtype = \"FP64\""), "FP64"),
    ];
    for (text, word) in &cases {
        let message = parse_error(text);
        assert!(
            message.contains(FILE) && message.contains(word),
            "{message}"
        );
        assert!(message.contains("line"), "{message}");
    }
}

// ---------------------------------------------------------------------------
// One test per kind of problem.

#[test]
fn invalid_name() {
    let p = refused_at(
        &edit("name = \"age_days\"", "name = \"Age Days\""),
        "static_view[0].feature[0].name",
    );
    assert!(matches!(p, DefinitionProblem::InvalidName { .. }), "{p}");
    let p = refused_at(
        &edit(
            "features = [\"profile.age_days\"",
            "features = [\"profile.age.days\"",
        ),
        "model[0].features[0]",
    );
    assert!(matches!(p, DefinitionProblem::BadReference { .. }), "{p}");
    let p = refused_at(
        &edit("name = \"scorer\"", "name = \"a/b\""),
        "model[0].name",
    );
    assert!(matches!(p, DefinitionProblem::InvalidName { .. }), "{p}");
    let p = refused_at(
        &edit("input = \"features\"", "input = \"\""),
        "model[0].input",
    );
    assert!(matches!(p, DefinitionProblem::InvalidName { .. }), "{p}");
    let p = refused_at(
        &edit("of = \"amount\"", "of = \"Amount\""),
        "dynamic_view[0].feature[1].aggregate.of",
    );
    assert!(matches!(p, DefinitionProblem::InvalidName { .. }), "{p}");
}

#[test]
fn reserved_view_name() {
    let p = refused_at(
        &edit("name = \"activity\"", "name = \"request\""),
        "dynamic_view[0].name",
    );
    assert_eq!(p, DefinitionProblem::ReservedName);
}

#[test]
fn duplicate_names() {
    let extra_entity = "\n[[entity]]\nname = \"customer\"\nkeys = [\"id\"]\n";
    let extra_request =
        "\n[[request_feature]]\nname = \"amount\"\ntype = \"float32\"\ndefault = 0\n";
    let extra_model = "\n[[model]]\nname = \"scorer\"\ninput = \"x\"\ndtype = \"FP32\"\nfeatures = [\"request.amount\"]\n";
    let cases = [
        (
            format!("{BASE}{extra_entity}"),
            "entity[1].name",
            "entity",
            "entity[0].name",
        ),
        (
            edit("name = \"activity\"", "name = \"profile\""),
            "dynamic_view[0].name",
            "view",
            "static_view[0].name",
        ),
        (
            edit("name = \"country\"", "name = \"age_days\""),
            "static_view[0].feature[1].name",
            "feature of this view",
            "static_view[0].feature[0].name",
        ),
        (
            format!("{BASE}{extra_request}"),
            "request_feature[2].name",
            "request feature",
            "request_feature[0].name",
        ),
        (
            format!("{BASE}{extra_model}"),
            "model[1].name",
            "model",
            "model[0].name",
        ),
        (
            edit(
                "keys = [\"customer_id\"]",
                "keys = [\"customer_id\", \"customer_id\"]",
            ),
            "entity[0].keys[1]",
            "key column of this entity",
            "entity[0].keys[0]",
        ),
    ];
    for (text, key, kind, first) in &cases {
        let p = refused_at(text, key);
        match &p {
            DefinitionProblem::DuplicateName {
                kind: k, first: f, ..
            } => {
                assert_eq!((k, f.as_str()), (kind, *first), "{p}");
            }
            other => panic!("{key}: expected DuplicateName, got {other}"),
        }
        assert!(p.to_string().contains(first), "{p}");
    }
}

#[test]
fn empty_lists() {
    let no_features = edit(
        "[[static_view.feature]]\nname = \"age_days\"\ntype = \"int64\"\ndefault = 1\n\n[[static_view.feature]]\nname = \"country\"\ntype = \"string\"\ndefault = \"unknown\"\n",
        "",
    );
    let cases = [
        (
            edit("keys = [\"customer_id\"]", "keys = []"),
            "entity[0].keys",
        ),
        (no_features, "static_view[0].feature"),
        (
            edit(
                "features = [\"profile.age_days\", \"activity.txn_count_1h\", \"activity.amount_mean_1h\", \"request.amount\", \"request.card_present\"]",
                "features = []",
            ),
            "model[0].features",
        ),
    ];
    for (text, key) in &cases {
        let p = refused_at(text, key);
        assert!(
            matches!(p, DefinitionProblem::EmptyList { .. }),
            "{key}: {p}"
        );
    }
}

#[test]
fn unknown_entity() {
    let p = refused_at(
        &edit("entity = \"customer\"\nttl", "entity = \"merchant\"\nttl"),
        "dynamic_view[0].entity",
    );
    assert_eq!(
        p,
        DefinitionProblem::UnknownEntity {
            name: "merchant".into(),
            known: "customer".into()
        }
    );
}

#[test]
fn bad_duration() {
    let cases = [
        (
            edit("max_age = \"36h\"", "max_age = \"36 hours\""),
            "static_view[0].max_age",
        ),
        (edit("ttl = \"48h\"", "ttl = \"0d\""), "dynamic_view[0].ttl"),
        (
            edit(
                "window = \"1h\", of = \"amount\"",
                "window = \"1.5h\", of = \"amount\"",
            ),
            "dynamic_view[0].feature[1].aggregate.window",
        ),
    ];
    for (text, key) in &cases {
        let p = refused_at(text, key);
        assert!(
            matches!(p, DefinitionProblem::BadDuration { .. }),
            "{key}: {p}"
        );
    }
}

#[test]
fn ttl_shorter_than_max_age() {
    let p = refused_at(
        &edit("ttl = \"48h\"", "ttl = \"12h\""),
        "dynamic_view[0].ttl",
    );
    assert_eq!(
        p,
        DefinitionProblem::TtlShorterThanMaxAge {
            ttl: "12h".into(),
            max_age: "24h".into()
        }
    );
}

#[test]
fn default_type_mismatch() {
    let cases = [
        (
            edit("default = \"unknown\"", "default = 0"),
            "static_view[0].feature[1].default",
            FeatureType::String,
        ),
        (
            edit("default = 1\n", "default = 1.5\n"),
            "static_view[0].feature[0].default",
            FeatureType::Int64,
        ),
        (
            edit("default = false", "default = 0"),
            "request_feature[1].default",
            FeatureType::Bool,
        ),
        (
            edit(
                "default = 0\naggregate = { function = \"mean\"",
                "default = nan\naggregate = { function = \"mean\"",
            ),
            "dynamic_view[0].feature[1].default",
            FeatureType::Float32,
        ),
    ];
    for (text, key, ty) in &cases {
        let p = refused_at(text, key);
        assert!(
            matches!(&p, DefinitionProblem::DefaultType { feature_type, .. } if feature_type == ty),
            "{key}: {p}"
        );
    }
}

#[test]
fn aggregate_in_static_view() {
    let text = edit(
        "default = 1\n",
        "default = 1\naggregate = { function = \"count\", window = \"1d\", of = \"x\" }\n",
    );
    let p = refused_at(&text, "static_view[0].feature[0].aggregate");
    assert_eq!(p, DefinitionProblem::AggregateInStaticView);
}

#[test]
fn aggregate_type_mismatch() {
    let p = refused_at(
        &edit(
            "type = \"float32\"\ndefault = 0\naggregate",
            "type = \"int64\"\ndefault = 0\naggregate",
        ),
        "dynamic_view[0].feature[1].aggregate.function",
    );
    assert!(
        matches!(
            p,
            DefinitionProblem::AggregateType {
                function: AggregateFunction::Mean,
                feature_type: FeatureType::Int64,
                ..
            }
        ),
        "{p}"
    );
}

#[test]
fn window_longer_than_ttl() {
    let p = refused_at(
        &edit(
            "window = \"1h\", of = \"transaction_id\"",
            "window = \"3d\", of = \"transaction_id\"",
        ),
        "dynamic_view[0].feature[0].aggregate.window",
    );
    assert_eq!(
        p,
        DefinitionProblem::WindowLongerThanTtl {
            window: "3d".into(),
            ttl: "48h".into()
        }
    );
}

#[test]
fn required_with_default() {
    let p = refused_at(
        &edit("required = true", "required = true\ndefault = 0.0"),
        "request_feature[0].default",
    );
    assert_eq!(p, DefinitionProblem::RequiredWithDefault);
}

#[test]
fn missing_default() {
    for replacement in ["", "required = false"] {
        let p = refused_at(&edit("required = true", replacement), "request_feature[0]");
        assert_eq!(p, DefinitionProblem::MissingDefault);
    }
}

#[test]
fn bad_reference() {
    let p = refused_at(
        &edit("\"request.amount\"", "\"amount\""),
        "model[0].features[3]",
    );
    assert_eq!(
        p,
        DefinitionProblem::BadReference {
            reference: "amount".into()
        }
    );
}

#[test]
fn unknown_view() {
    let p = refused_at(
        &edit("\"activity.txn_count_1h\"", "\"activty.txn_count_1h\""),
        "model[0].features[1]",
    );
    assert_eq!(
        p,
        DefinitionProblem::UnknownView {
            view: "activty".into(),
            known: "profile, activity".into()
        }
    );
}

#[test]
fn unknown_feature() {
    let p = refused_at(
        &edit("\"activity.amount_mean_1h\"", "\"activity.amount_sum_1h\""),
        "model[0].features[2]",
    );
    assert_eq!(
        p,
        DefinitionProblem::UnknownFeature {
            view: "activity".into(),
            feature: "amount_sum_1h".into(),
            known: "txn_count_1h, amount_mean_1h".into()
        }
    );
}

#[test]
fn unknown_request_feature() {
    let p = refused_at(
        &edit("\"request.card_present\"", "\"request.card\""),
        "model[0].features[4]",
    );
    assert!(
        matches!(&p, DefinitionProblem::UnknownRequestFeature { name, known } if name == "card" && known == "amount, card_present"),
        "{p}"
    );
}

#[test]
fn duplicate_column() {
    // The same name from two sources.
    let two_sources = format!(
        "{}\n[[request_feature]]\nname = \"age_days\"\ntype = \"int64\"\ndefault = 0\n",
        edit(
            "\"request.card_present\"]",
            "\"request.card_present\", \"request.age_days\"]"
        )
    );
    let p = refused_at(&two_sources, "model[0].features[5]");
    assert_eq!(
        p,
        DefinitionProblem::DuplicateColumn {
            name: "age_days".into(),
            first_index: 0,
            first_reference: "profile.age_days".into()
        }
    );
    // The same reference twice.
    let repeated = edit(
        "\"request.card_present\"]",
        "\"request.card_present\", \"activity.txn_count_1h\"]",
    );
    let p = refused_at(&repeated, "model[0].features[5]");
    assert!(
        matches!(p, DefinitionProblem::DuplicateColumn { first_index: 1, .. }),
        "{p}"
    );
}

#[test]
fn column_type_mismatch() {
    let p = refused_at(
        &edit(
            "\"request.card_present\"]",
            "\"request.card_present\", \"profile.country\"]",
        ),
        "model[0].features[5]",
    );
    assert_eq!(
        p,
        DefinitionProblem::ColumnType {
            reference: "profile.country".into(),
            feature_type: FeatureType::String,
            dtype: InputDtype::Fp32
        }
    );
}

#[test]
fn default_out_of_range_for_the_input() {
    // A valid float64 default that an FP32 column cannot hold.
    let text = format!(
        "{}\n[[request_feature]]\nname = \"huge\"\ntype = \"float64\"\ndefault = 1e300\n",
        edit(
            "\"request.card_present\"]",
            "\"request.card_present\", \"request.huge\"]"
        )
    );
    let p = refused_at(&text, "model[0].features[5]");
    assert!(
        matches!(&p, DefinitionProblem::DefaultOutOfRange { reference, .. } if reference == "request.huge"),
        "{p}"
    );
}

// ---------------------------------------------------------------------------
// [[refresh_job]]

const JOB: &str = r#"
[[refresh_job]]
name = "profile_daily"
interval = "24h"
timeout = "2h"

[refresh_job.source]
file = "profile.csv"

[refresh_job.tuner]
model = "scorer"
metric = "auc"
positive_label = "fraud"
threshold = 0.9
min_interval = "1h"
max_interval = "7d"
window = "1h"
"#;

fn with_job(from: &str, to: &str) -> String {
    assert!(JOB.contains(from), "JOB has no {from:?}");
    format!("{BASE}{}", JOB.replacen(from, to, 1))
}

#[test]
fn a_declared_job_is_validated_with_its_defaults() {
    let defs = parse(&format!("{BASE}{JOB}")).unwrap();
    let job = defs.job_spec("profile_daily").unwrap();
    assert_eq!(job.view, "profile");
    assert_eq!(job.interval, Duration::from_secs(86_400));
    assert_eq!(job.missed_run, MissedRun::RunOnce);
    assert_eq!(job.script_version, "unversioned");
    // Relative to the definitions file's folder.
    assert_eq!(
        job.source,
        JobSource::File(Path::new("defs/profile.csv").to_owned())
    );
    let t = job.tuning.as_ref().unwrap();
    assert_eq!(t.policy.good_windows, 3);
    assert_eq!(t.policy.min_samples, 500);
    assert_eq!(t.scoring.output, "probabilities");
    let example = example();
    let spec = example.job_spec("customer_profile_daily").unwrap();
    assert_eq!(spec.view, "customer_profile");
    assert!(spec.tuning.is_some());
}

#[test]
fn job_problems_name_their_key() {
    let cases = [
        (
            with_job("name = \"profile_daily\"", "name = \"nightly\""),
            "refresh_job[0].name",
        ),
        (
            with_job("timeout = \"2h\"", "timeout = \"2 hours\""),
            "refresh_job[0].timeout",
        ),
        (
            with_job(
                "timeout = \"2h\"",
                "timeout = \"2h\"\nmissed_run = \"later\"",
            ),
            "refresh_job[0].missed_run",
        ),
        (
            with_job("interval = \"24h\"", "interval = \"30m\""),
            "refresh_job[0].interval",
        ),
        (
            with_job("file = \"profile.csv\"", "command = []"),
            "refresh_job[0].source.command",
        ),
        (
            with_job("file = \"profile.csv\"", ""),
            "refresh_job[0].source",
        ),
        (
            with_job("metric = \"auc\"", "metric = \"f1\""),
            "refresh_job[0].tuner.metric",
        ),
        (
            with_job("positive_label = \"fraud\"", ""),
            "refresh_job[0].tuner.positive_label",
        ),
        (
            with_job("min_interval = \"1h\"", "min_interval = \"8d\""),
            "refresh_job[0].tuner.min_interval",
        ),
        (
            with_job("model = \"scorer\"", "model = \"ranker\""),
            "refresh_job[0].tuner.model",
        ),
        (
            with_job("window = \"1h\"", "window = \"1h\"\ngood_windows = 0"),
            "refresh_job[0].tuner.good_windows",
        ),
        (
            format!(
                "{BASE}{JOB}{}",
                JOB.split("[refresh_job.tuner]").next().unwrap()
            ),
            "refresh_job[1].name",
        ),
    ];
    for (text, key) in cases {
        let problem = refused_at(&text, key);
        assert!(!problem.to_string().is_empty());
    }
    // A typo in a key is a parse error naming it.
    let message = parse_error(&with_job("timeout = \"2h\"", "timout = \"2h\""));
    assert!(message.contains("timout"), "{message}");
}

#[test]
fn a_job_source_may_be_a_command() {
    let defs = parse(&with_job(
        "file = \"profile.csv\"",
        "file = \"/data/profile.csv\"\ncommand = [\"python3\", \"export.py\"]",
    ))
    .unwrap();
    assert_eq!(
        defs.job_spec("profile_daily").unwrap().source,
        JobSource::CommandThenFile {
            command: vec!["python3".into(), "export.py".into()],
            file: "/data/profile.csv".into()
        }
    );
    let defs = parse(&with_job(
        "file = \"profile.csv\"",
        "command = [\"./load.sh\"]",
    ))
    .unwrap();
    assert_eq!(
        defs.job_spec("profile_daily").unwrap().source,
        JobSource::Command(vec!["./load.sh".into()])
    );
}

// ---------------------------------------------------------------------------
// Scoring jobs.

/// BASE with two more models and a scoring job for each.
fn scoring(jobs: &str) -> String {
    format!(
        r#"{BASE}
[[request_feature]]
name = "merchant_category"
type = "int64"
default = 0

[[model]]
name = "by_customer"
input = "features"
dtype = "FP32"
features = ["profile.age_days", "activity.txn_count_1h", "request.card_present"]

[[model]]
name = "by_combination"
input = "features"
dtype = "FP32"
features = ["request.merchant_category", "request.amount", "request.card_present"]
{jobs}"#
    )
}

const SCORING_JOBS: &str = r#"
[[scoring_job]]
name = "customers"
model = "by_customer"
key = "entity"
score = { view = "profile" }
interval = "1d"
max_age = "36h"

[[scoring_job]]
name = "combinations"
model = "by_combination"
key = "combination"
score = { top_combinations = 5000, window = "7d" }
interval = "6h"
max_age = "1d"
version = "2"
cardinality = { max_keys = 100000, new_category_factor = 4.0 }

[[scoring_job.key_feature]]
feature = "request.merchant_category"

[[scoring_job.key_feature]]
feature = "request.amount"
edges = [10.0, 50.0, 200.0]

[[scoring_job.key_feature]]
feature = "request.card_present"
"#;

/// SCORING_JOBS with the first `from` replaced by `to`.
fn scoring_edit(from: &str, to: &str) -> String {
    assert!(SCORING_JOBS.contains(from), "SCORING_JOBS has no {from:?}");
    scoring(&SCORING_JOBS.replacen(from, to, 1))
}

#[test]
fn scoring_jobs_are_read_with_their_keys_sources_and_limits() {
    let defs = parse(&scoring(SCORING_JOBS)).unwrap_or_else(|e| panic!("{e}"));
    let customers = defs.scoring_job("customers").expect("declared");
    assert_eq!(customers.key, ScoringKey::Entity);
    assert_eq!(customers.source, ScoreSource::View("profile".into()));
    assert_eq!(customers.interval, Duration::from_secs(86_400));
    assert_eq!(customers.version, None, "the stable version at run time");
    assert_eq!(customers.cardinality.max_keys, DEFAULT_MAX_KEYS);
    let combos = defs.scoring_job("combinations").expect("declared");
    let ScoringKey::Combination(key) = &combos.key else {
        panic!("{:?}", combos.key)
    };
    let order: Vec<_> = key.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(order, ["merchant_category", "amount", "card_present"]);
    assert_eq!(
        key[1].bins.as_ref().map(|b| b.edges().to_vec()),
        Some(vec![10.0, 50.0, 200.0])
    );
    assert!(key[0].bins.is_none() && key[2].bins.is_none());
    assert_eq!(
        combos.source,
        ScoreSource::TopCombinations {
            n: 5000,
            window: Duration::from_secs(7 * 86_400)
        }
    );
    assert_eq!(combos.version.as_deref(), Some("2"));
    assert_eq!(combos.cardinality.new_category_factor, 4.0);
    assert_eq!(defs.scoring_jobs().len(), 2);
}

/// The key of an assembled row is the combination key of its key features
/// in key order, binned as declared, categories as their text: what the
/// gateway computes for a call and the job for a scored row.
#[test]
fn a_row_key_bins_as_declared_and_follows_the_key_order() {
    use crate::combination::{CombinationKey, KeyValue};
    let defs = parse(&scoring(SCORING_JOBS)).unwrap_or_else(|e| panic!("{e}"));
    let key = &defs.scoring_job("combinations").expect("declared").key;
    // Row columns: merchant_category, amount, card_present (the model's
    // order, which is also the key's here).
    let at = |mcc: f32, amount: f32, present: f32| key.of_row("", &[mcc, amount, present]);
    let expected = CombinationKey::of(&[
        ("merchant_category", KeyValue::Category("5411")),
        ("amount", KeyValue::Bin(2)),
        ("card_present", KeyValue::Category("true")),
    ]);
    assert_eq!(at(5411.0, 120.0, 1.0), expected.as_str());
    assert_eq!(
        at(5411.0, 50.0, 1.0),
        expected.as_str(),
        "an edge opens its bin"
    );
    assert_ne!(at(5411.0, 49.99, 1.0), expected.as_str());
    assert_ne!(at(5411.0, 120.0, 0.0), expected.as_str());
    assert_eq!(
        at(5411.0, f32::NAN, 1.0),
        CombinationKey::of(&[
            ("merchant_category", KeyValue::Category("5411")),
            ("amount", KeyValue::Missing),
            ("card_present", KeyValue::Category("true")),
        ])
        .as_str()
    );
    // The same values in another key order make another key.
    let reordered = SCORING_JOBS.replacen(
        "[[scoring_job.key_feature]]\nfeature = \"request.merchant_category\"\n\n",
        "",
        1,
    ) + "\n[[scoring_job.key_feature]]\nfeature = \"request.merchant_category\"\n";
    let defs = parse(&scoring(&reordered)).unwrap_or_else(|e| panic!("{e}"));
    let other = &defs.scoring_job("combinations").expect("declared").key;
    assert_ne!(other.of_row("", &[5411.0, 120.0, 1.0]), expected.as_str());
    assert_eq!(
        key.categories(&[5411.0, 120.0, 1.0]),
        [
            ("merchant_category", "5411".to_owned()),
            ("card_present", "true".to_owned())
        ]
    );
    // An entity key is the entity's.
    let entity = &defs.scoring_job("customers").expect("declared").key;
    assert_eq!(entity.of_row("c-1", &[]), "c-1");
}

#[test]
fn a_model_has_one_scoring_job() {
    let text = scoring(&format!(
        "{SCORING_JOBS}\n[[scoring_job]]\nname = \"again\"\nmodel = \"by_customer\"\nkey = \"entity\"\nscore = {{ view = \"profile\" }}\ninterval = \"1d\"\nmax_age = \"1d\"\n"
    ));
    let err = parse(&text).expect_err("refused").to_string();
    assert!(err.contains("scoring_job[2].model"), "{err}");
    assert!(err.contains("already scored by `scoring_job[0]`"), "{err}");
}

#[test]
fn bad_scoring_jobs_are_refused_at_their_key() {
    for (text, key, says) in [
        (
            scoring_edit("model = \"by_customer\"", "model = \"nope\""),
            "scoring_job[0].model",
            "no [[model]] is named \"nope\"",
        ),
        (
            scoring_edit("model = \"by_customer\"", "model = \"scorer\""),
            "scoring_job[0].key",
            "needs the request feature \"request.amount\", which has no default",
        ),
        (
            scoring_edit("key = \"entity\"", "key = \"customer\""),
            "scoring_job[0].key",
            "is not \"entity\" or \"combination\"",
        ),
        (
            scoring_edit(
                "score = { view = \"profile\" }",
                "score = { view = \"profile\", file = \"keys.csv\" }",
            ),
            "scoring_job[0].score",
            "give exactly one of",
        ),
        (
            scoring_edit(
                "score = { view = \"profile\" }",
                "score = { top_combinations = 10, window = \"1d\" }",
            ),
            "scoring_job[0].score.top_combinations",
            "this job's key is the entity",
        ),
        (
            scoring_edit(
                "score = { view = \"profile\" }",
                "score = { top_entities = 10 }",
            ),
            "scoring_job[0].score.window",
            "give the window",
        ),
        (
            scoring_edit("max_age = \"36h\"", "max_age = \"soon\""),
            "scoring_job[0].max_age",
            "bad duration",
        ),
        (
            scoring_edit("name = \"combinations\"", "name = \"customers\""),
            "scoring_job[1].name",
            "already declared at `scoring_job[0]`",
        ),
        (
            scoring_edit(
                "feature = \"request.merchant_category\"",
                "feature = \"request.nope\"",
            ),
            "scoring_job[1].key_feature[0].feature",
            "is not an input of model \"by_combination\"",
        ),
        (
            scoring_edit("edges = [10.0, 50.0, 200.0]", "edges = [10.0, 200.0, 50.0]"),
            "scoring_job[1].key_feature[1].edges",
            "bin edges must increase: edge 2 (50) is not above 200",
        ),
        (
            scoring_edit("edges = [10.0, 50.0, 200.0]\n", ""),
            "scoring_job[1].key_feature[1].edges",
            "declare its bin edges",
        ),
        (
            scoring_edit(
                "\n[[scoring_job.key_feature]]\nfeature = \"request.card_present\"\n",
                "",
            ),
            "scoring_job[1].key_feature",
            "also takes \"request.card_present\", which is not in the key",
        ),
        (
            scoring_edit("new_category_factor = 4.0", "new_category_factor = 0.5"),
            "scoring_job[1].cardinality.new_category_factor",
            "must be a number of at least 1",
        ),
    ] {
        let problem = refused_at(&text, key).to_string();
        assert!(problem.contains(says), "{key}: {problem}");
    }
}

// ---------------------------------------------------------------------------
// Kafka sources of dynamic views.

const ACTIVITY: &str = "ttl = \"48h\"\nmax_age = \"24h\"\n";

#[test]
fn a_kafka_source_takes_its_defaults_from_the_entity() {
    let defs = parse(&edit(
        ACTIVITY,
        &format!("{ACTIVITY}source = {{ kafka = {{ topic = \"activity.events\", encoding = \"json\" }} }}\n"),
    ))
    .unwrap();
    let [source] = defs.event_sources() else {
        panic!("one source: {:?}", defs.event_sources());
    };
    assert_eq!(source.view, "activity");
    assert_eq!(source.key_fields, ["customer_id"]);
    assert_eq!(
        (source.time_field.as_str(), source.id_field.as_str()),
        ("event_time", "event_id")
    );
    assert_eq!(source.encoding, EventEncoding::Json);
    assert!(
        example()
            .event_sources()
            .iter()
            .any(|s| s.view == "customer_activity")
    );
}

#[test]
fn bad_kafka_sources_name_the_key() {
    let with = |kafka: &str| {
        edit(
            ACTIVITY,
            &format!("{ACTIVITY}source = {{ kafka = {{ {kafka} }} }}\n"),
        )
    };
    let at = "dynamic_view[0].source.kafka";
    for (kafka, key) in [
        ("topic = \"no spaces\", encoding = \"json\"", "topic"),
        (
            "topic = \"t\", encoding = \"json\", key_fields = [\"a\", \"b\"]",
            "key_fields",
        ),
        (
            "topic = \"t\", encoding = \"protobuf\", time_field = \"at\"",
            "time_field",
        ),
        (
            "topic = \"t\", encoding = \"json\", time_field = \"amount\"",
            "time_field",
        ),
        (
            "topic = \"t\", encoding = \"json\", id_field = \"customer_id\"",
            "id_field",
        ),
    ] {
        let problem = refused_at(&with(kafka), &format!("{at}.{key}"));
        assert!(
            matches!(problem, DefinitionProblem::EventSource(_)),
            "{kafka}: {problem}"
        );
    }
    assert!(parse_error(&with("topic = \"t\", encoding = \"avro\"")).contains("avro"));
}

// ---------------------------------------------------------------------------
// Vectors.

const VECTOR: &str = "[[static_view.feature]]\nname = \"embedding\"\ntype = \"vector(3)\"\ndefault = 0.0\n\n[[static_view.feature]]\nname = \"country\"";

#[test]
fn a_static_view_holds_vectors_with_a_default() {
    let defs = parse(&edit("[[static_view.feature]]\nname = \"country\"", VECTOR))
        .unwrap_or_else(|e| panic!("{e}"));
    let view = defs.view("profile").expect("view");
    let embedding = view
        .features
        .iter()
        .find(|f| f.name == "embedding")
        .expect("feature");
    assert_eq!(embedding.feature_type, FeatureType::Vector(3));
    assert_eq!(embedding.feature_type.to_string(), "vector(3)");
    assert_eq!(embedding.default, FeatureValue::Vector(vec![0.0; 3]));

    let listed = parse(&edit(
        "[[static_view.feature]]\nname = \"country\"",
        &VECTOR.replace("default = 0.0", "default = [1, 0.5, -2]"),
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let view = listed.view("profile").expect("view");
    assert_eq!(
        view.features[1].default,
        FeatureValue::Vector(vec![1.0, 0.5, -2.0])
    );
    refused_at(
        &edit(
            "[[static_view.feature]]\nname = \"country\"",
            &VECTOR.replace("default = 0.0", "default = [1, 2]"),
        ),
        "static_view[0].feature[1].default",
    );
}

#[test]
fn vector_types_are_named_and_bounded() {
    for bad in ["vector(0)", "vector(4097)", "vector", "vector(x)"] {
        let message = parse_error(&edit(
            "type = \"int64\"\ndefault = 1",
            &format!("type = \"{bad}\"\ndefault = 1"),
        ));
        assert!(
            message.contains("vector(N) with N from 1 to 4096"),
            "{message}"
        );
    }
}

#[test]
fn vectors_stay_out_of_dynamic_views_requests_and_model_inputs() {
    let problem = refused_at(
        &edit(
            "name = \"amount_mean_1h\"\ntype = \"float32\"\ndefault = 0\naggregate = { function = \"mean\", window = \"1h\", of = \"amount\" }",
            "name = \"amount_mean_1h\"\ntype = \"vector(2)\"\ndefault = 0",
        ),
        "dynamic_view[0].feature[1].type",
    );
    assert!(matches!(
        problem,
        DefinitionProblem::VectorOutsideStaticView {
            place: "dynamic views"
        }
    ));
    let problem = refused_at(
        &edit(
            "name = \"amount\"\ntype = \"float64\"",
            "name = \"amount\"\ntype = \"vector(2)\"",
        ),
        "request_feature[0].type",
    );
    assert!(matches!(
        problem,
        DefinitionProblem::VectorOutsideStaticView {
            place: "request features"
        }
    ));
    let as_input = edit("[[static_view.feature]]\nname = \"country\"", VECTOR).replace(
        "features = [\"profile.age_days\"",
        "features = [\"profile.embedding\", \"profile.age_days\"",
    );
    let problem = refused_at(&as_input, "model[0].features[0]");
    assert!(
        matches!(problem, DefinitionProblem::ColumnType { .. }),
        "{problem:?}"
    );
}

// ---------------------------------------------------------------------------
// Similarity indexes and includes.

/// BASE with a vector feature and an index on it (`index` is the table's body).
fn indexed(index: &str) -> String {
    edit("[[static_view.feature]]\nname = \"country\"", VECTOR).replace(
        "[[dynamic_view]]",
        &format!("[static_view.index]\n{index}\n\n[[dynamic_view]]"),
    )
}

#[test]
fn an_index_is_declared_on_a_vector_feature_with_defaults() {
    let defs = parse(&indexed("feature = \"embedding\"\ndistance = \"cosine\""))
        .unwrap_or_else(|e| panic!("{e}"));
    let (view, spec) = defs.indexed_views().next().expect("an indexed view");
    assert_eq!(view.name, "profile");
    assert_eq!(spec.dimensions, 3);
    assert_eq!(spec.distance, Distance::Cosine);
    assert_eq!(spec.max_k, DEFAULT_MAX_K);
    assert_eq!(spec.quantization, Quantization::F16);
    assert!((spec.recall_threshold - DEFAULT_RECALL_THRESHOLD).abs() < 1e-12);
    let l2 = parse(&indexed(
        "feature = \"embedding\"\ndistance = \"l2\"\nmax_k = 7\nquantization = \"f32\"",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let (_, spec) = l2.indexed_views().next().expect("an indexed view");
    assert_eq!((spec.distance, spec.max_k), (Distance::L2, 7));
}

#[test]
fn index_mistakes_name_the_key_and_the_fix() {
    for (body, key, says) in [
        (
            "feature = \"nope\"\ndistance = \"cosine\"",
            "static_view[0].index.feature",
            "has no feature \"nope\"",
        ),
        (
            "feature = \"country\"\ndistance = \"cosine\"",
            "static_view[0].index.feature",
            "is a string feature; an index holds a vector(N) feature",
        ),
        (
            "feature = \"embedding\"\ndistance = \"cosine\"\nmax_k = 0",
            "static_view[0].index.max_k",
            "0 is out of range; use 1 to 1000",
        ),
        (
            "feature = \"embedding\"\ndistance = \"cosine\"\nrecall_threshold = 1.5",
            "static_view[0].index.recall_threshold",
            "1.5 is not a recall",
        ),
    ] {
        let problem = refused_at(&indexed(body), key);
        assert!(problem.to_string().contains(says), "{problem}");
    }
    let message = parse_error(&indexed(
        "feature = \"embedding\"\ndistance = \"manhattan\"",
    ));
    assert!(message.contains("manhattan"), "{message}");
}

#[test]
fn included_files_are_merged_and_cycles_refused() {
    let dir = std::env::temp_dir().join(format!("mlgw-include-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let extra = "[[entity]]\nname = \"merchant\"\nkeys = [\"merchant_id\"]\n";
    std::fs::write(dir.join("extra.toml"), extra).expect("write");
    let main = dir.join("main.toml");
    std::fs::write(&main, format!("include = [\"extra.toml\"]\n{BASE}")).expect("write");
    let defs = FeatureDefinitions::load(&main).unwrap_or_else(|e| panic!("{e}"));
    assert!(defs.entity("merchant").is_some());
    assert!(defs.entity("customer").is_some());
    std::fs::write(
        dir.join("extra.toml"),
        format!("include = [\"main.toml\"]\n{extra}"),
    )
    .expect("write");
    let err = FeatureDefinitions::load(&main).expect_err("a cycle");
    assert!(err.to_string().contains("included twice"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_example_serves_merchant_embeddings_with_an_index() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("definitions/example.toml");
    let defs = FeatureDefinitions::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let (view, spec) = defs.indexed_views().next().expect("the merchants' index");
    assert_eq!(view.name, "merchant_embedding");
    assert_eq!((spec.dimensions, spec.distance), (64, Distance::Cosine));
    assert!(defs.model("fraud_detector").is_some());
}
