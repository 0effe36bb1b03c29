//! Reading a static view's refresh file in CSV: a header naming the entity's key
//! columns and some or all of the view's features, then one row per entity.
//!
//! Every cell is parsed to its declared type; an empty cell means "no value"
//! (the default applies when the row is read). A header that does not fit the
//! view, or a file that is not CSV, stops the load; a row with a bad cell or an
//! empty key is rejected with its line, column and value, and the rest of the
//! file loads.

use std::collections::BTreeMap;
use std::io::Read;

use super::{RejectedRow, SourceError, SourceItem, expected_columns};
use crate::definitions::{Entity, FeatureType, FeatureValue, FeatureView};

enum Column {
    Key(usize),
    Feature(String, FeatureType),
}

/// A streaming reader of a CSV refresh file.
pub struct CsvRows<R> {
    reader: csv::Reader<R>,
    source_name: String,
    columns: Vec<Column>,
    keys: Vec<String>,
    record: csv::StringRecord,
    failed: bool,
}

impl<R: Read> CsvRows<R> {
    /// Reads and checks the header of `input` for `view` (whose entity is
    /// `entity`). `source_name` labels errors (usually the file path).
    ///
    /// # Errors
    /// [`SourceError`] when the header is malformed, repeats a column, names a
    /// column the view does not have, or lacks a key column.
    pub fn new(
        view: &FeatureView,
        entity: &Entity,
        input: R,
        source_name: &str,
    ) -> Result<Self, SourceError> {
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(input);
        let headers = reader
            .headers()
            .map_err(|e| malformed(source_name, &e))?
            .clone();
        let mut columns = Vec::with_capacity(headers.len());
        let mut seen: Vec<&str> = Vec::with_capacity(headers.len());
        for name in &headers {
            if seen.contains(&name) {
                return Err(SourceError::DuplicateColumn {
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
                return Err(SourceError::UnknownColumn {
                    source_name: source_name.to_owned(),
                    column: name.to_owned(),
                    entity: entity.name.clone(),
                    view: view.name.clone(),
                    expected: expected_columns(view, entity),
                });
            }
        }
        if let Some(missing) = entity.keys.iter().find(|k| !seen.contains(&k.as_str())) {
            return Err(SourceError::MissingKeyColumn {
                source_name: source_name.to_owned(),
                column: missing.clone(),
                entity: entity.name.clone(),
            });
        }
        Ok(CsvRows {
            reader,
            source_name: source_name.to_owned(),
            columns,
            keys: entity.keys.clone(),
            record: csv::StringRecord::new(),
            failed: false,
        })
    }

    fn row(&self) -> SourceItem {
        let line = self.record.position().map_or(0, |p| p.line());
        let reject = |reason: String| SourceItem::Rejected(RejectedRow { line, reason });
        let mut key_parts = vec![""; self.keys.len()];
        let mut values = BTreeMap::new();
        for (cell, column) in self.record.iter().zip(&self.columns) {
            match column {
                Column::Key(k) => {
                    if cell.is_empty() {
                        return reject(format!("key column \"{}\" is empty", self.keys[*k]));
                    }
                    key_parts[*k] = cell;
                }
                Column::Feature(_, _) if cell.is_empty() => {}
                Column::Feature(name, FeatureType::Vector(n)) => match parse_vector(cell, *n) {
                    Ok(value) => {
                        values.insert(name.clone(), value);
                    }
                    Err(why) => return reject(format!("column \"{name}\": {why}")),
                },
                Column::Feature(name, ty) => match parse_cell(cell, *ty) {
                    Some(value) => {
                        values.insert(name.clone(), value);
                    }
                    None => {
                        return reject(format!("column \"{name}\": {cell:?} is not a valid {ty}"));
                    }
                },
            }
        }
        SourceItem::row(line, &key_parts, values)
    }
}

impl<R: Read> Iterator for CsvRows<R> {
    type Item = Result<SourceItem, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.reader.read_record(&mut self.record) {
            Ok(true) => Some(Ok(self.row())),
            Ok(false) => None,
            Err(e) => {
                // A row with the wrong number of fields is that row's problem;
                // anything else (bad UTF-8, I/O) makes the rest unreadable.
                if let csv::ErrorKind::UnequalLengths {
                    pos,
                    expected_len,
                    len,
                } = e.kind()
                {
                    let line = pos.as_ref().map_or(0, csv::Position::line);
                    return Some(Ok(SourceItem::Rejected(RejectedRow {
                        line,
                        reason: format!("has {len} fields; the header has {expected_len}"),
                    })));
                }
                self.failed = true;
                Some(Err(malformed(&self.source_name, &e)))
            }
        }
    }
}

fn malformed(source_name: &str, e: &csv::Error) -> SourceError {
    SourceError::Malformed {
        source_name: source_name.to_owned(),
        format: "CSV",
        detail: e.to_string(),
    }
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
        FeatureType::Vector(n) => parse_vector(cell, n).ok(),
    }
}

/// A vector cell (see [`parse_vector`](crate::definitions::parse_vector)).
fn parse_vector(cell: &str, n: u16) -> Result<FeatureValue, String> {
    crate::definitions::parse_vector(cell, n).map(FeatureValue::Vector)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::definitions::FeatureDefinitions;
    use crate::source::SourceRow;

    fn load(text: &str) -> Result<Vec<SourceItem>, SourceError> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("definitions/fraud.toml");
        let defs = FeatureDefinitions::load(&path).unwrap();
        let view = defs.view("customer_profile").unwrap();
        let entity = defs.entity("customer").unwrap();
        CsvRows::new(view, entity, text.as_bytes(), "profile.csv")?.collect()
    }

    fn row(item: &SourceItem) -> &SourceRow {
        match item {
            SourceItem::Row(r) => r,
            SourceItem::Rejected(r) => panic!("rejected: {r:?}"),
        }
    }

    #[test]
    fn rows_parse_to_declared_types_and_empty_cells_are_absent() {
        let items = load(
            "customer_id,account_age_days,avg_txn_amount_30d,chargeback_count_1y\n\
             c-1,420,85.5,0\n\
             c-2, 31 ,,2\n",
        )
        .unwrap();
        assert_eq!(items.len(), 2);
        let (r0, r1) = (row(&items[0]), row(&items[1]));
        assert_eq!((r0.entity_key.as_str(), r0.line), ("c-1", 2));
        assert_eq!(r0.values["account_age_days"], FeatureValue::Int64(420));
        assert_eq!(r0.values["avg_txn_amount_30d"], FeatureValue::Float32(85.5));
        assert_eq!(
            r1.values["account_age_days"],
            FeatureValue::Int64(31),
            "cells are trimmed"
        );
        assert!(
            !r1.values.contains_key("avg_txn_amount_30d"),
            "empty cell = no value"
        );
    }

    #[test]
    fn bad_rows_are_rejected_with_line_column_and_value_and_the_rest_loads() {
        let items = load(
            "customer_id,account_age_days,avg_txn_amount_30d\n\
             c-1,3.5,1\n\
             c-2,4,NaN\n\
             ,5,1\n\
             c-4,6,1,9\n\
             c-5,7,2.5\n",
        )
        .unwrap();
        let rejected: Vec<(u64, String)> = items
            .iter()
            .filter_map(|i| match i {
                SourceItem::Rejected(r) => Some((r.line, r.reason.clone())),
                SourceItem::Row(_) => None,
            })
            .collect();
        assert_eq!(
            rejected,
            vec![
                (
                    2,
                    "column \"account_age_days\": \"3.5\" is not a valid int64".to_owned()
                ),
                (
                    3,
                    "column \"avg_txn_amount_30d\": \"NaN\" is not a valid float32".to_owned()
                ),
                (4, "key column \"customer_id\" is empty".to_owned()),
                (5, "has 4 fields; the header has 3".to_owned()),
            ]
        );
        assert_eq!(row(&items[4]).entity_key, "c-5");
    }

    #[test]
    fn header_errors_name_the_file_and_column() {
        let cases = [
            ("customer_id,age\nc-1,3\n", "column \"age\" is not a key"),
            ("account_age_days\n3\n", "lacks key column \"customer_id\""),
            ("customer_id,customer_id\nc-1,c-1\n", "appears twice"),
        ];
        for (text, needle) in cases {
            let err = load(text).map(|_| ()).unwrap_err().to_string();
            assert!(err.starts_with("profile.csv"), "{err}");
            assert!(err.contains(needle), "{err:?} should contain {needle:?}");
        }
    }
}
