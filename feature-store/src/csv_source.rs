//! Reading a static view's refresh file in CSV: a header naming the entity's key
//! columns and some or all of the view's features, then one row per entity.
//!
//! Every cell is parsed to its declared type; an empty cell means "no value"
//! (the default applies when the row is read). Anything else that does not fit
//! — an unknown or missing column, a malformed value, a repeated entity — stops
//! the load with an error naming the file, the line, the column, the value and
//! what was expected, so a bad file never half-loads.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use crate::definitions::{Entity, FeatureType, FeatureValue, FeatureView};

/// One entity's values from a refresh file.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRow {
    /// The entity's key: its key columns' values, joined with `\u{1f}` when the
    /// entity has several key columns.
    pub entity_key: String,
    /// Feature name to value; empty cells are absent.
    pub values: BTreeMap<String, FeatureValue>,
}

/// Separator between the parts of a compound entity key (ASCII unit separator,
/// which cannot appear in a CSV field written by ordinary tools by accident).
pub const KEY_SEPARATOR: char = '\u{1f}';

/// Why a refresh file cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CsvSourceError {
    /// The file is not well-formed CSV (or not UTF-8).
    #[error("{source_name}: malformed CSV")]
    Csv {
        /// The file.
        source_name: String,
        /// The parser's error, with its position.
        #[source]
        error: csv::Error,
    },
    /// A header column is neither a key column of the entity nor a feature of
    /// the view.
    #[error(
        "{source_name}: column \"{column}\" is not a key of entity \"{entity}\" nor a feature of view \"{view}\"; expected some of: {expected}"
    )]
    UnknownColumn {
        /// The file.
        source_name: String,
        /// The unexpected header.
        column: String,
        /// The entity.
        entity: String,
        /// The view.
        view: String,
        /// The columns that are allowed.
        expected: String,
    },
    /// A key column of the entity is missing from the header.
    #[error("{source_name}: the header lacks key column \"{column}\" of entity \"{entity}\"")]
    MissingKeyColumn {
        /// The file.
        source_name: String,
        /// The missing key column.
        column: String,
        /// The entity.
        entity: String,
    },
    /// The same column appears twice in the header.
    #[error("{source_name}: column \"{column}\" appears twice in the header")]
    DuplicateColumn {
        /// The file.
        source_name: String,
        /// The repeated header.
        column: String,
    },
    /// A cell does not parse as its column's declared type.
    #[error("{source_name}: line {line}, column \"{column}\": {value:?} is not a valid {expected}")]
    BadValue {
        /// The file.
        source_name: String,
        /// 1-based line number.
        line: u64,
        /// The column.
        column: String,
        /// The cell's text.
        value: String,
        /// The declared type.
        expected: FeatureType,
    },
    /// A key cell is empty.
    #[error("{source_name}: line {line}: key column \"{column}\" is empty")]
    EmptyKey {
        /// The file.
        source_name: String,
        /// 1-based line number.
        line: u64,
        /// The key column.
        column: String,
    },
    /// Two rows have the same entity key.
    #[error(
        "{source_name}: line {line} repeats entity {key:?} first given on line {first_line}; a refresh file holds one row per entity"
    )]
    DuplicateEntity {
        /// The file.
        source_name: String,
        /// 1-based line of the repeat.
        line: u64,
        /// 1-based line of the first occurrence.
        first_line: u64,
        /// The entity key.
        key: String,
    },
}

enum Column {
    Key(usize),
    Feature(String, FeatureType),
}

/// Reads every row of a CSV refresh file for `view` (whose entity is `entity`).
/// `source_name` labels errors (usually the file path).
///
/// # Errors
/// The first `CsvSourceError` found; nothing is returned from a bad file.
pub fn read_csv(
    view: &FeatureView,
    entity: &Entity,
    input: impl Read,
    source_name: &str,
) -> Result<Vec<SourceRow>, CsvSourceError> {
    let csv_err = |error| CsvSourceError::Csv {
        source_name: source_name.to_owned(),
        error,
    };
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(input);
    let headers = reader.headers().map_err(csv_err)?.clone();
    let mut columns = Vec::with_capacity(headers.len());
    let mut seen: Vec<&str> = Vec::with_capacity(headers.len());
    for name in &headers {
        if seen.contains(&name) {
            return Err(CsvSourceError::DuplicateColumn {
                source_name: source_name.to_owned(),
                column: name.to_owned(),
            });
        }
        seen.push(name);
        if let Some(k) = entity.keys.iter().position(|k| k == name) {
            columns.push(Column::Key(k));
        } else if let Some(spec) = view.feature(name) {
            columns.push(Column::Feature(spec.name.clone(), spec.feature_type));
        } else {
            let expected = entity
                .keys
                .iter()
                .chain(view.features.iter().map(|f| &f.name))
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(CsvSourceError::UnknownColumn {
                source_name: source_name.to_owned(),
                column: name.to_owned(),
                entity: entity.name.clone(),
                view: view.name.clone(),
                expected,
            });
        }
    }
    if let Some(missing) = entity.keys.iter().find(|k| !seen.contains(&k.as_str())) {
        return Err(CsvSourceError::MissingKeyColumn {
            source_name: source_name.to_owned(),
            column: missing.clone(),
            entity: entity.name.clone(),
        });
    }

    let mut rows = Vec::new();
    let mut first_line: HashMap<String, u64> = HashMap::new();
    let mut record = csv::StringRecord::new();
    while reader.read_record(&mut record).map_err(csv_err)? {
        let line = record.position().map_or(0, |p| p.line());
        let mut key_parts = vec![""; entity.keys.len()];
        let mut values = BTreeMap::new();
        for (cell, column) in record.iter().zip(&columns) {
            match column {
                Column::Key(k) => {
                    if cell.is_empty() {
                        return Err(CsvSourceError::EmptyKey {
                            source_name: source_name.to_owned(),
                            line,
                            column: entity.keys[*k].clone(),
                        });
                    }
                    key_parts[*k] = cell;
                }
                Column::Feature(_, _) if cell.is_empty() => {}
                Column::Feature(name, ty) => {
                    let value = parse_cell(cell, *ty).ok_or_else(|| CsvSourceError::BadValue {
                        source_name: source_name.to_owned(),
                        line,
                        column: name.clone(),
                        value: cell.to_owned(),
                        expected: *ty,
                    })?;
                    values.insert(name.clone(), value);
                }
            }
        }
        let entity_key = key_parts.join(&KEY_SEPARATOR.to_string());
        if let Some(first) = first_line.get(&entity_key) {
            return Err(CsvSourceError::DuplicateEntity {
                source_name: source_name.to_owned(),
                line,
                first_line: *first,
                key: entity_key,
            });
        }
        first_line.insert(entity_key.clone(), line);
        rows.push(SourceRow { entity_key, values });
    }
    Ok(rows)
}

/// Parses one cell as `ty`; None when it does not fit. Floats must be finite.
fn parse_cell(cell: &str, ty: FeatureType) -> Option<FeatureValue> {
    match ty {
        FeatureType::Float32 => cell
            .parse::<f32>()
            .ok()
            .filter(|f| f.is_finite())
            .map(FeatureValue::Float32),
        FeatureType::Float64 => cell
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(FeatureValue::Float64),
        FeatureType::Int64 => cell.parse::<i64>().ok().map(FeatureValue::Int64),
        FeatureType::Bool => match cell.to_ascii_lowercase().as_str() {
            "true" | "1" => Some(FeatureValue::Bool(true)),
            "false" | "0" => Some(FeatureValue::Bool(false)),
            _ => None,
        },
        FeatureType::String => Some(FeatureValue::String(cell.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::definitions::FeatureDefinitions;

    fn load(text: &str) -> Result<Vec<SourceRow>, CsvSourceError> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("definitions/fraud.toml");
        let defs = FeatureDefinitions::load(&path).unwrap();
        let view = defs.view("customer_profile").unwrap();
        let entity = defs.entity("customer").unwrap();
        read_csv(view, entity, text.as_bytes(), "profile.csv")
    }

    #[test]
    fn rows_parse_to_declared_types_and_empty_cells_are_absent() {
        let rows = load(
            "customer_id,account_age_days,avg_txn_amount_30d,chargeback_count_1y\n\
             c-1,420,85.5,0\n\
             c-2, 31 ,,2\n",
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].entity_key, "c-1");
        assert_eq!(rows[0].values["account_age_days"], FeatureValue::Int64(420));
        assert_eq!(
            rows[0].values["avg_txn_amount_30d"],
            FeatureValue::Float32(85.5)
        );
        assert_eq!(
            rows[1].values["account_age_days"],
            FeatureValue::Int64(31),
            "cells are trimmed"
        );
        assert!(
            !rows[1].values.contains_key("avg_txn_amount_30d"),
            "empty cell = no value"
        );
    }

    #[test]
    fn errors_name_file_line_column_and_expectation() {
        let cases = [
            ("customer_id,age\nc-1,3\n", "column \"age\" is not a key"),
            ("account_age_days\n3\n", "lacks key column \"customer_id\""),
            ("customer_id,customer_id\nc-1,c-1\n", "appears twice"),
            (
                "customer_id,account_age_days\nc-1,3.5\n",
                "line 2, column \"account_age_days\": \"3.5\" is not a valid int64",
            ),
            (
                "customer_id,avg_txn_amount_30d\nc-1,NaN\n",
                "\"NaN\" is not a valid float32",
            ),
            (
                "customer_id,account_age_days\n,3\n",
                "line 2: key column \"customer_id\" is empty",
            ),
            (
                "customer_id,account_age_days\nc-1,3\nc-2,4\nc-1,5\n",
                "line 4 repeats entity \"c-1\" first given on line 2",
            ),
            ("customer_id,account_age_days\nc-1,3,9\n", "malformed CSV"),
        ];
        for (text, needle) in cases {
            let err = load(text).unwrap_err().to_string();
            assert!(err.starts_with("profile.csv"), "{err}");
            assert!(err.contains(needle), "{err:?} should contain {needle:?}");
        }
    }
}
