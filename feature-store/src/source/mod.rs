//! Refresh files: the rows a static refresh job loads into a view.
//!
//! A file (CSV or Parquet, chosen by its extension) names the entity's key
//! columns and some or all of the view's features. Readers stream it as
//! [`SourceItem`]s: a typed row, or a row rejected with its line (CSV) or row
//! number (Parquet) and the reason, so a refresh can count and report bad rows
//! instead of dropping them. Problems with the file as a whole (unreadable,
//! malformed, an unknown or missing column, a Parquet column whose type cannot
//! hold its feature's) are a [`SourceError`] and stop the load before anything
//! is written. Repeated entities are found by the refresh job, which sees
//! every row.

pub mod csv;
pub mod parquet;

use std::collections::BTreeMap;
use std::path::Path;

use crate::definitions::{Entity, FeatureType, FeatureValue, FeatureView};

/// One entity's values from a refresh file.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRow {
    /// 1-based line (CSV, counting the header) or data row number (Parquet).
    pub line: u64,
    /// The entity's key: its key columns' values, joined with [`KEY_SEPARATOR`]
    /// when the entity has several key columns.
    pub entity_key: String,
    /// Feature name to value; empty cells (nulls) are absent.
    pub values: BTreeMap<String, FeatureValue>,
}

/// A row that could not be loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RejectedRow {
    /// 1-based line (CSV) or data row number (Parquet).
    pub line: u64,
    /// What is wrong, naming the column and value.
    pub reason: String,
}

/// What a reader yields for each row of the file.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceItem {
    /// A row whose every cell has its declared type.
    Row(SourceRow),
    /// A row that cannot be loaded.
    Rejected(RejectedRow),
}

/// Separator between the parts of a compound entity key (ASCII unit separator,
/// which cannot appear in a CSV field written by ordinary tools by accident).
pub const KEY_SEPARATOR: char = '\u{1f}';

impl SourceItem {
    /// A loadable row whose entity has the key columns' values `key_parts`.
    fn row<S: std::borrow::Borrow<str>>(
        line: u64,
        key_parts: &[S],
        values: BTreeMap<String, FeatureValue>,
    ) -> Self {
        let mut separator = [0; 4];
        Self::Row(SourceRow {
            line,
            entity_key: key_parts.join(&*KEY_SEPARATOR.encode_utf8(&mut separator)),
            values,
        })
    }
}

/// A streaming reader of a refresh file.
pub type SourceRows = Box<dyn Iterator<Item = Result<SourceItem, SourceError>> + Send>;

/// Why a refresh file cannot be loaded at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The file cannot be opened or read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        error: std::io::Error,
    },
    /// The extension is neither `.csv` nor `.parquet` / `.pq`.
    #[error("{path}: unknown refresh file format; expected a .csv or .parquet file")]
    UnknownFormat {
        /// The file.
        path: String,
    },
    /// The file is not well-formed in its format.
    #[error("{source_name}: malformed {format} file: {detail}")]
    Malformed {
        /// The file.
        source_name: String,
        /// "CSV" or "Parquet".
        format: &'static str,
        /// The parser's message, with its position where known.
        detail: String,
    },
    /// A column is neither a key column of the entity nor a feature of the view.
    #[error(
        "{source_name}: column \"{column}\" is not a key of entity \"{entity}\" nor a feature of view \"{view}\"; expected some of: {expected}"
    )]
    UnknownColumn {
        /// The file.
        source_name: String,
        /// The unexpected column.
        column: String,
        /// The entity.
        entity: String,
        /// The view.
        view: String,
        /// The columns that are allowed.
        expected: String,
    },
    /// A key column of the entity is missing.
    #[error("{source_name}: the file lacks key column \"{column}\" of entity \"{entity}\"")]
    MissingKeyColumn {
        /// The file.
        source_name: String,
        /// The missing key column.
        column: String,
        /// The entity.
        entity: String,
    },
    /// The same column appears twice.
    #[error("{source_name}: column \"{column}\" appears twice")]
    DuplicateColumn {
        /// The file.
        source_name: String,
        /// The repeated column.
        column: String,
    },
    /// A Parquet column's physical/logical type cannot hold the feature's type.
    #[error(
        "{source_name}: column \"{column}\" has Parquet type {found}, which cannot hold a {expected} feature"
    )]
    ColumnType {
        /// The file.
        source_name: String,
        /// The column.
        column: String,
        /// The Parquet type found.
        found: String,
        /// The declared feature type.
        expected: FeatureType,
    },
    /// A Parquet key column is neither text nor integers.
    #[error(
        "{source_name}: key column \"{column}\" has Parquet type {found}; key columns must hold UTF-8 text or integers"
    )]
    KeyColumnType {
        /// The file.
        source_name: String,
        /// The key column.
        column: String,
        /// The Parquet type found.
        found: String,
    },
}

/// Opens `path` for `view` (whose entity is `entity`), choosing the reader by
/// extension (`.csv`, `.parquet` / `.pq`).
///
/// # Errors
/// [`SourceError`] when the file cannot be opened or its header/schema does not
/// fit the view.
pub fn open(view: &FeatureView, entity: &Entity, path: &Path) -> Result<SourceRows, SourceError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("csv") => {
            let file = std::fs::File::open(path).map_err(|error| SourceError::Io {
                path: path.display().to_string(),
                error,
            })?;
            let rows = csv::CsvRows::new(
                view,
                entity,
                std::io::BufReader::with_capacity(1 << 16, file),
                &path.display().to_string(),
            )?;
            Ok(Box::new(rows))
        }
        Some("parquet" | "pq") => Ok(Box::new(parquet::ParquetRows::open(view, entity, path)?)),
        _ => Err(SourceError::UnknownFormat {
            path: path.display().to_string(),
        }),
    }
}

/// The columns a file may have, for error messages.
pub(crate) fn expected_columns(view: &FeatureView, entity: &Entity) -> String {
    entity
        .keys
        .iter()
        .chain(view.features.iter().map(|f| &f.name))
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ")
}
