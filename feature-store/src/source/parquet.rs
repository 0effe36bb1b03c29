//! Reading a static view's refresh file in Parquet: top-level columns named
//! after the entity's key columns and some or all of the view's features, one
//! row per entity.
//!
//! The schema is checked before any row is read: every column must be a key or
//! a feature, appear once, and have a Parquet type that holds its declared type
//! without loss (`float32` ← FLOAT; `float64` ← DOUBLE or FLOAT; `int64` ←
//! INT64 or INT32, signed or unsigned as long as it fits; `bool` ← BOOLEAN;
//! `string` ← BYTE_ARRAY annotated as UTF-8 text; `vector(N)` ← a list of
//! FLOAT, as pyarrow writes `list<float32>` and fixed-size lists, or a
//! repeated FLOAT). Key columns may be text or integers (ids often are);
//! integers become their decimal text. Other nested and repeated columns and
//! other types (timestamps, decimals, dates, plain binary) are refused, as is a column chunk compressed with a codec this build cannot
//! read (only snappy and uncompressed are built in).
//!
//! A null cell means "no value" (the default applies when the row is read). A
//! row whose key is null or empty, whose float is not finite or whose text is
//! not UTF-8 is rejected with its 1-based data row number and the reason, and
//! the rest of the file loads. The file is read row group by row group, a batch
//! of rows at a time, through the column readers, so memory stays bounded by
//! the batch and the pages being decoded whatever the file's size.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use parquet::basic::{Compression, ConvertedType, LogicalType, Repetition, Type as PhysicalType};
use parquet::column::reader::ColumnReader;
use parquet::data_type::ByteArray;
use parquet::errors::ParquetError;
use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::SerializedFileReader;
use parquet::schema::types::{ColumnDescriptor, Type as SchemaType};

use super::{RejectedRow, SourceError, SourceItem, expected_columns};
use crate::definitions::{Entity, FeatureType, FeatureValue, FeatureView};

/// Rows decoded per column at a time.
const BATCH_ROWS: usize = 4096;

/// A column's values as they are stored, with integers' signedness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    Bool,
    Int32 {
        unsigned: bool,
    },
    Int64 {
        unsigned: bool,
    },
    Float,
    Double,
    Utf8,
    /// A list of FLOAT: `outer_optional` when a null list is possible,
    /// `element_optional` when a null element is.
    FloatList {
        outer_optional: bool,
        element_optional: bool,
    },
}

impl Stored {
    /// How `desc` is stored, or None for a kind of column this reader never
    /// reads (INT96, fixed-length or unannotated binary, dates, timestamps,
    /// decimals, JSON, ...).
    fn of(desc: &ColumnDescriptor) -> Option<Stored> {
        let logical = desc.logical_type_ref();
        let converted = desc.converted_type();
        let plain = logical.is_none() && converted == ConvertedType::NONE;
        match desc.physical_type() {
            PhysicalType::BOOLEAN if plain => Some(Stored::Bool),
            PhysicalType::FLOAT if plain => Some(Stored::Float),
            PhysicalType::DOUBLE if plain => Some(Stored::Double),
            PhysicalType::INT32 => {
                int_signedness(logical, converted, false).map(|unsigned| Stored::Int32 { unsigned })
            }
            PhysicalType::INT64 => {
                int_signedness(logical, converted, true).map(|unsigned| Stored::Int64 { unsigned })
            }
            PhysicalType::BYTE_ARRAY => {
                let text = match logical {
                    Some(l) => *l == LogicalType::String,
                    None => converted == ConvertedType::UTF8,
                };
                text.then_some(Stored::Utf8)
            }
            _ => None,
        }
    }

    /// Whether every value stored this way is a value of `ty`.
    fn holds(self, ty: FeatureType) -> bool {
        match ty {
            FeatureType::Float32 => self == Stored::Float,
            FeatureType::Float64 => matches!(self, Stored::Float | Stored::Double),
            FeatureType::Int64 => matches!(
                self,
                Stored::Int32 { .. } | Stored::Int64 { unsigned: false }
            ),
            FeatureType::Bool => self == Stored::Bool,
            FeatureType::String => self == Stored::Utf8,
            FeatureType::Vector(_) => matches!(self, Stored::FloatList { .. }),
        }
    }

    /// Whether values stored this way can be an entity key.
    fn is_key(self) -> bool {
        matches!(
            self,
            Stored::Int32 { .. } | Stored::Int64 { .. } | Stored::Utf8
        )
    }
}

/// Whether an INT32 (`is_64` false) or INT64 column holds unsigned integers;
/// None when its annotation makes it something else than a plain integer
/// (a date, time, timestamp or decimal).
fn int_signedness(
    logical: Option<&LogicalType>,
    converted: ConvertedType,
    is_64: bool,
) -> Option<bool> {
    match logical {
        Some(LogicalType::Integer(int)) => {
            let fits = if is_64 {
                int.bit_width == 64
            } else {
                matches!(int.bit_width, 8 | 16 | 32)
            };
            fits.then_some(!int.is_signed)
        }
        Some(_) => None,
        None => match (converted, is_64) {
            (ConvertedType::NONE, _) => Some(false),
            (ConvertedType::INT_8 | ConvertedType::INT_16 | ConvertedType::INT_32, false) => {
                Some(false)
            }
            (ConvertedType::UINT_8 | ConvertedType::UINT_16 | ConvertedType::UINT_32, false) => {
                Some(true)
            }
            (ConvertedType::INT_64, true) => Some(false),
            (ConvertedType::UINT_64, true) => Some(true),
            _ => None,
        },
    }
}

/// A top-level field's type as a person reading the schema would name it.
fn describe(field: &SchemaType) -> String {
    if field.is_group() {
        return "group (nested columns, or a list of another type than FLOAT)".to_owned();
    }
    let info = field.get_basic_info();
    let mut text = String::new();
    if info.has_repetition() && info.repetition() == Repetition::REPEATED {
        text.push_str("repeated ");
    }
    let physical = field.get_physical_type();
    text.push_str(&physical.to_string());
    if let Some(logical) = info.logical_type_ref() {
        text.push_str(&format!(" ({})", logical_name(logical)));
    } else if info.converted_type() != ConvertedType::NONE {
        text.push_str(&format!(" ({})", info.converted_type()));
    } else if physical == PhysicalType::BYTE_ARRAY {
        text.push_str(" (binary, not annotated as UTF-8 text)");
    }
    text
}

/// A logical type in the notation of the Parquet spec.
fn logical_name(logical: &LogicalType) -> String {
    match logical {
        LogicalType::String => "STRING".to_owned(),
        LogicalType::Enum => "ENUM".to_owned(),
        LogicalType::Json => "JSON".to_owned(),
        LogicalType::Uuid => "UUID".to_owned(),
        LogicalType::Date => "DATE".to_owned(),
        LogicalType::Time(_) => "TIME".to_owned(),
        LogicalType::Timestamp(_) => "TIMESTAMP".to_owned(),
        LogicalType::Float16 => "FLOAT16".to_owned(),
        LogicalType::Decimal(d) => format!("DECIMAL({}, {})", d.precision, d.scale),
        LogicalType::Integer(int) => format!(
            "INT({}, {})",
            int.bit_width,
            if int.is_signed { "signed" } else { "unsigned" }
        ),
        other => format!("{other:?}"),
    }
}

/// What a column of the file is for.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// The entity's key column at this index.
    Key(usize),
    /// A feature of this type.
    Feature(FeatureType),
}

/// Decoded values of one column for the current batch.
enum Values {
    Bool(Vec<bool>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Float(Vec<f32>),
    Double(Vec<f64>),
    Bytes(Vec<ByteArray>),
}

impl Values {
    fn new(stored: Stored) -> Values {
        match stored {
            Stored::FloatList { .. } => Values::Float(Vec::new()),
            Stored::Bool => Values::Bool(Vec::new()),
            Stored::Int32 { .. } => Values::Int32(Vec::new()),
            Stored::Int64 { .. } => Values::Int64(Vec::new()),
            Stored::Float => Values::Float(Vec::new()),
            Stored::Double => Values::Double(Vec::new()),
            Stored::Utf8 => Values::Bytes(Vec::new()),
        }
    }

    fn clear(&mut self) {
        match self {
            Values::Bool(v) => v.clear(),
            Values::Int32(v) => v.clear(),
            Values::Int64(v) => v.clear(),
            Values::Float(v) => v.clear(),
            Values::Double(v) => v.clear(),
            Values::Bytes(v) => v.clear(),
        }
    }
}

/// One non-null cell.
enum Cell<'a> {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f32),
    Double(f64),
    Bytes(&'a [u8]),
}

/// A column the reader reads, with its decoding state in the current batch.
struct Column {
    /// Index of the column among the file's leaf columns.
    leaf: usize,
    name: String,
    role: Role,
    stored: Stored,
    /// 1 for an optional column (0 in `defs` is a null), 0 for a required one.
    max_def: i16,
    /// The reader of this column's chunk in the current row group.
    reader: Option<ColumnReader>,
    /// Definition levels of the batch's rows (optional columns only), or of
    /// its list entries (list columns).
    defs: Vec<i16>,
    /// Repetition levels of the batch's list entries (list columns only).
    reps: Vec<i16>,
    /// Index in `defs` of the next row's first level (list columns only).
    next_level: usize,
    /// The batch's non-null values, in row order.
    values: Values,
    /// Index in `values` of the next row's value.
    next_value: usize,
}

impl Column {
    /// Decodes the next `rows` rows of the current row group into the batch
    /// buffers; returns how many rows were there.
    fn read_batch(&mut self, rows: usize) -> Result<usize, ParquetError> {
        self.defs.clear();
        self.reps.clear();
        self.values.clear();
        self.next_value = 0;
        self.next_level = 0;
        let is_list = matches!(self.stored, Stored::FloatList { .. });
        let defs = (self.max_def > 0).then_some(&mut self.defs);
        let reps = is_list.then_some(&mut self.reps);
        let Some(reader) = self.reader.as_mut() else {
            return Ok(0);
        };
        let (records, _, _) = match (reader, &mut self.values) {
            (ColumnReader::BoolColumnReader(r), Values::Bool(v)) => {
                r.read_records(rows, defs, None, v)?
            }
            (ColumnReader::Int32ColumnReader(r), Values::Int32(v)) => {
                r.read_records(rows, defs, None, v)?
            }
            (ColumnReader::Int64ColumnReader(r), Values::Int64(v)) => {
                r.read_records(rows, defs, None, v)?
            }
            (ColumnReader::FloatColumnReader(r), Values::Float(v)) => {
                r.read_records(rows, defs, reps, v)?
            }
            (ColumnReader::DoubleColumnReader(r), Values::Double(v)) => {
                r.read_records(rows, defs, None, v)?
            }
            (ColumnReader::ByteArrayColumnReader(r), Values::Bytes(v)) => {
                r.read_records(rows, defs, None, v)?
            }
            _ => {
                return Err(ParquetError::General(
                    "the column chunk's type differs from the schema's".to_owned(),
                ));
            }
        };
        Ok(records)
    }

    /// Moves past row `row` of the batch; the index of its value in `values`,
    /// or None when the cell is null.
    fn advance(&mut self, row: usize) -> Option<usize> {
        if self.max_def > 0 && self.defs.get(row).is_none_or(|d| *d < self.max_def) {
            return None;
        }
        let index = self.next_value;
        self.next_value += 1;
        Some(index)
    }

    /// The next row of a list column: None for a null list, else its
    /// elements or why they are not a vector (a null element).
    fn take_list(&mut self) -> Option<Result<Vec<f32>, String>> {
        let Stored::FloatList {
            outer_optional,
            element_optional,
        } = self.stored
        else {
            return Some(Err("the column is not a list".to_owned()));
        };
        let Values::Float(values) = &self.values else {
            return Some(Err("the column is not a list of floats".to_owned()));
        };
        let null_list_below = i16::from(outer_optional);
        let mut out = Vec::new();
        let mut problem = None;
        let mut first = true;
        let mut null = false;
        while let Some(&def) = self.defs.get(self.next_level) {
            let rep = self.reps.get(self.next_level).copied().unwrap_or(0);
            if !first && rep == 0 {
                break;
            }
            first = false;
            self.next_level += 1;
            if def == self.max_def {
                if let Some(v) = values.get(self.next_value) {
                    out.push(*v);
                }
                self.next_value += 1;
            } else if element_optional && def == self.max_def - 1 {
                problem.get_or_insert(format!("component {} is null", out.len() + 1));
                out.push(f32::NAN);
            } else if def < null_list_below {
                null = true;
            }
        }
        if null {
            return None;
        }
        Some(match problem {
            Some(p) => Err(p),
            None => Ok(out),
        })
    }

    /// The value at `index` in `values`; None if there is none (a chunk with
    /// fewer values than its levels say, which the decoder does not let through).
    fn cell(&self, index: usize) -> Option<Cell<'_>> {
        let unsigned = matches!(
            self.stored,
            Stored::Int32 { unsigned: true } | Stored::Int64 { unsigned: true }
        );
        match &self.values {
            Values::Bool(v) => v.get(index).map(|b| Cell::Bool(*b)),
            Values::Int32(v) => v.get(index).map(|i| {
                if unsigned {
                    // UINT_8/16/32 are stored in INT32's bits.
                    Cell::Int(i64::from(i.cast_unsigned()))
                } else {
                    Cell::Int(i64::from(*i))
                }
            }),
            Values::Int64(v) => v.get(index).map(|i| {
                if unsigned {
                    Cell::UInt(i.cast_unsigned())
                } else {
                    Cell::Int(*i)
                }
            }),
            Values::Float(v) => v.get(index).map(|f| Cell::Float(*f)),
            Values::Double(v) => v.get(index).map(|f| Cell::Double(*f)),
            Values::Bytes(v) => v.get(index).map(|b| Cell::Bytes(b.data())),
        }
    }
}

/// A streaming reader of a Parquet refresh file.
pub struct ParquetRows {
    reader: SerializedFileReader<File>,
    source_name: String,
    /// The file's columns, in file order.
    columns: Vec<Column>,
    key_count: usize,
    /// The next row group to open.
    next_row_group: usize,
    /// Rows of the current row group not read into a batch yet.
    group_rows_left: usize,
    /// Rows in the current batch, and the next one to yield.
    batch_len: usize,
    batch_pos: usize,
    /// Data rows of the file before the current batch.
    rows_before_batch: u64,
    failed: bool,
}

impl ParquetRows {
    /// Opens `path`, checks its schema against the view and entity.
    ///
    /// # Errors
    /// [`SourceError`] when the file cannot be read or is not Parquet, repeats a
    /// column, names a column the view does not have, lacks a key column, has a
    /// column whose type cannot hold its feature's (or a key's) values, or is
    /// compressed with a codec this build does not read.
    pub fn open(view: &FeatureView, entity: &Entity, path: &Path) -> Result<Self, SourceError> {
        let source_name = path.display().to_string();
        let file = File::open(path).map_err(|error| SourceError::Io {
            path: source_name.clone(),
            error,
        })?;
        let reader =
            SerializedFileReader::new(file).map_err(|e| read_error(&source_name, "", e))?;
        let schema = reader.metadata().file_metadata().schema_descr_ptr();
        let fields = schema.root_schema().get_fields();
        let mut columns: Vec<Column> = Vec::with_capacity(fields.len());
        let mut next_leaf = 0;
        for field in fields {
            let name = field.name();
            if columns.iter().any(|c| c.name == name) {
                return Err(SourceError::DuplicateColumn {
                    source_name,
                    column: name.to_owned(),
                });
            }
            let role = if let Some(k) = entity.keys.iter().position(|k| k == name) {
                Role::Key(k)
            } else if let Some(spec) = view.feature(name) {
                Role::Feature(spec.feature_type)
            } else {
                return Err(SourceError::UnknownColumn {
                    source_name,
                    column: name.to_owned(),
                    entity: entity.name.clone(),
                    view: view.name.clone(),
                    expected: expected_columns(view, entity),
                });
            };
            // The field's leaf columns: one for a primitive or a list (any
            // other nesting is refused below).
            let leaf = next_leaf;
            let leaves = leaf_count(field);
            next_leaf += leaves;
            let desc = (leaves == 1 && leaf < schema.num_columns()).then(|| schema.column(leaf));
            let stored = match &desc {
                Some(d) if field.is_primitive() => (d.max_rep_level() == 0
                    && d.max_def_level() <= 1)
                    .then(|| Stored::of(d))
                    .flatten(),
                Some(d) => float_list(field, d),
                None => None,
            };
            let fits = stored.is_some_and(|s| match role {
                Role::Key(_) => s.is_key(),
                Role::Feature(ty) => s.holds(ty),
            });
            let (Some(desc), Some(stored), true) = (desc, stored, fits) else {
                return Err(match role {
                    Role::Key(_) => SourceError::KeyColumnType {
                        source_name,
                        column: name.to_owned(),
                        found: describe(field),
                    },
                    Role::Feature(expected) => SourceError::ColumnType {
                        source_name,
                        column: name.to_owned(),
                        found: describe(field),
                        expected,
                    },
                });
            };
            columns.push(Column {
                leaf,
                name: name.to_owned(),
                role,
                stored,
                max_def: desc.max_def_level(),
                reader: None,
                defs: Vec::with_capacity(BATCH_ROWS),
                reps: Vec::new(),
                next_level: 0,
                values: Values::new(stored),
                next_value: 0,
            });
        }
        if let Some(missing) = entity
            .keys
            .iter()
            .find(|k| !columns.iter().any(|c| &c.name == *k))
        {
            return Err(SourceError::MissingKeyColumn {
                source_name,
                column: missing.clone(),
                entity: entity.name.clone(),
            });
        }
        for group in reader.metadata().row_groups() {
            for column in &columns {
                let codec = group.column(column.leaf).compression();
                if let Err(detail) = check_codec(&column.name, codec) {
                    return Err(SourceError::Malformed {
                        source_name,
                        format: "Parquet",
                        detail,
                    });
                }
            }
        }
        Ok(ParquetRows {
            reader,
            source_name,
            columns,
            key_count: entity.keys.len(),
            next_row_group: 0,
            group_rows_left: 0,
            batch_len: 0,
            batch_pos: 0,
            rows_before_batch: 0,
            failed: false,
        })
    }

    /// Decodes the next batch of rows, opening the next row group when the
    /// current one is done; false at the end of the file.
    fn next_batch(&mut self) -> Result<bool, SourceError> {
        self.rows_before_batch += self.batch_len as u64;
        self.batch_len = 0;
        self.batch_pos = 0;
        while self.group_rows_left == 0 {
            if self.next_row_group >= self.reader.num_row_groups() {
                return Ok(false);
            }
            let index = self.next_row_group;
            self.next_row_group += 1;
            let group = self
                .reader
                .get_row_group(index)
                .map_err(|e| read_error(&self.source_name, &format!("row group {index}: "), e))?;
            let rows = group.metadata().num_rows();
            self.group_rows_left = usize::try_from(rows).map_err(|_| SourceError::Malformed {
                source_name: self.source_name.clone(),
                format: "Parquet",
                detail: format!("row group {index} has {rows} rows"),
            })?;
            for column in &mut self.columns {
                column.reader = Some(group.get_column_reader(column.leaf).map_err(|e| {
                    read_error(&self.source_name, &format!("row group {index}: "), e)
                })?);
            }
        }
        let group = self.next_row_group - 1;
        let want = self.group_rows_left.min(BATCH_ROWS);
        for column in &mut self.columns {
            let got = column.read_batch(want).map_err(|e| {
                let context = format!("row group {group}, column \"{}\": ", column.name);
                read_error(&self.source_name, &context, e)
            })?;
            if got != want {
                return Err(SourceError::Malformed {
                    source_name: self.source_name.clone(),
                    format: "Parquet",
                    detail: format!(
                        "row group {group}, column \"{}\": ends {} rows early",
                        column.name,
                        self.group_rows_left - got
                    ),
                });
            }
        }
        self.group_rows_left -= want;
        self.batch_len = want;
        Ok(true)
    }

    /// The batch's next row, typed or rejected.
    fn row(&mut self) -> SourceItem {
        let row = self.batch_pos;
        self.batch_pos += 1;
        let line = self.rows_before_batch + row as u64 + 1;
        let mut key_parts = vec![String::new(); self.key_count];
        let mut values = BTreeMap::new();
        let mut reason: Option<String> = None;
        for column in &mut self.columns {
            // Every column moves past the row, even once it is rejected, so the
            // columns stay in step.
            if let (Role::Feature(FeatureType::Vector(n)), Stored::FloatList { .. }) =
                (column.role, column.stored)
            {
                let list = column.take_list();
                if reason.is_some() {
                    continue;
                }
                match list.map(|l| l.and_then(|v| list_vector(v, n))) {
                    None => {}
                    Some(Ok(value)) => {
                        values.insert(column.name.clone(), value);
                    }
                    Some(Err(why)) => reason = Some(format!("column \"{}\": {why}", column.name)),
                }
                continue;
            }
            let index = column.advance(row);
            if reason.is_some() {
                continue;
            }
            let cell = index.and_then(|i| column.cell(i));
            match (column.role, cell) {
                (Role::Key(_), None) => {
                    reason = Some(format!("key column \"{}\" is empty", column.name));
                }
                (Role::Key(k), Some(cell)) => match key_text(cell) {
                    Ok(text) if text.is_empty() => {
                        reason = Some(format!("key column \"{}\" is empty", column.name));
                    }
                    Ok(text) => key_parts[k] = text,
                    Err(why) => reason = Some(format!("key column \"{}\": {why}", column.name)),
                },
                (Role::Feature(_), None) => {}
                (Role::Feature(ty), Some(cell)) => match feature_value(cell, ty) {
                    Ok(value) => {
                        values.insert(column.name.clone(), value);
                    }
                    Err(why) => reason = Some(format!("column \"{}\": {why}", column.name)),
                },
            }
        }
        if let Some(reason) = reason {
            return SourceItem::Rejected(RejectedRow { line, reason });
        }
        SourceItem::row(line, &key_parts, values)
    }
}

impl Iterator for ParquetRows {
    type Item = Result<SourceItem, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.batch_pos == self.batch_len {
            match self.next_batch() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        Some(Ok(self.row()))
    }
}

/// How many leaf columns `field` holds.
fn leaf_count(field: &SchemaType) -> usize {
    if field.is_primitive() {
        1
    } else {
        field.get_fields().iter().map(|f| leaf_count(f)).sum()
    }
}

/// A list column's elements as a `vector(n)` value; why not when the count
/// is wrong or a component is not finite.
fn list_vector(v: Vec<f32>, n: u16) -> Result<FeatureValue, String> {
    if v.len() != usize::from(n) {
        return Err(format!(
            "the list has {} components; the feature is vector({n})",
            v.len()
        ));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(format!(
            "component {} is {}, not a finite number",
            i + 1,
            v[i]
        ));
    }
    Ok(FeatureValue::Vector(v))
}

/// How a group field holding one leaf column is stored if it is a list of
/// FLOAT: the standard three-level LIST (`optional group x (LIST) {
/// repeated group list { optional float element; } }`, as pyarrow writes
/// lists and fixed-size lists) or a two-level repeated FLOAT.
fn float_list(field: &SchemaType, leaf: &ColumnDescriptor) -> Option<Stored> {
    let plain = leaf.logical_type_ref().is_none() && leaf.converted_type() == ConvertedType::NONE;
    if leaf.max_rep_level() != 1 || leaf.physical_type() != PhysicalType::FLOAT || !plain {
        return None;
    }
    let repetition = |t: &SchemaType| {
        let info = t.get_basic_info();
        info.has_repetition().then(|| info.repetition())
    };
    let outer_optional = repetition(field) == Some(Repetition::OPTIONAL);
    let element_optional = repetition(leaf.self_type()) == Some(Repetition::OPTIONAL);
    // Levels: the outer field (if optional), the repeated node, the element
    // (if optional); anything deeper is not a plain list.
    let expected = i16::from(outer_optional) + 1 + i16::from(element_optional);
    (leaf.max_def_level() == expected).then_some(Stored::FloatList {
        outer_optional,
        element_optional,
    })
}

/// A key cell as text: integers in decimal.
fn key_text(cell: Cell<'_>) -> Result<String, String> {
    match cell {
        Cell::Int(i) => Ok(i.to_string()),
        Cell::UInt(u) => Ok(u.to_string()),
        Cell::Bytes(b) => utf8(b).map(str::to_owned),
        Cell::Bool(_) | Cell::Float(_) | Cell::Double(_) => {
            Err("is not text or an integer".to_owned())
        }
    }
}

/// A feature cell as a value of `ty` (the schema check has matched the column
/// to the type); the reason when it is not a valid one.
fn feature_value(cell: Cell<'_>, ty: FeatureType) -> Result<FeatureValue, String> {
    let invalid = |shown: &dyn std::fmt::Display| format!("{shown} is not a valid {ty}");
    match (ty, cell) {
        (FeatureType::Float32, Cell::Float(f)) if f.is_finite() => Ok(FeatureValue::Float32(f)),
        (FeatureType::Float64, Cell::Float(f)) if f.is_finite() => {
            Ok(FeatureValue::Float64(f64::from(f)))
        }
        (FeatureType::Float64, Cell::Double(f)) if f.is_finite() => Ok(FeatureValue::Float64(f)),
        (FeatureType::Float32 | FeatureType::Float64, Cell::Float(f)) => Err(invalid(&f)),
        (FeatureType::Float64, Cell::Double(f)) => Err(invalid(&f)),
        (FeatureType::Int64, Cell::Int(i)) => Ok(FeatureValue::Int64(i)),
        (FeatureType::Int64, Cell::UInt(u)) => i64::try_from(u)
            .map(FeatureValue::Int64)
            .map_err(|_| invalid(&u)),
        (FeatureType::Bool, Cell::Bool(b)) => Ok(FeatureValue::Bool(b)),
        (FeatureType::String, Cell::Bytes(b)) => {
            utf8(b).map(|s| FeatureValue::String(s.to_owned()))
        }
        _ => Err(format!("the stored value is not a valid {ty}")),
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes)
        .map_err(|_| format!("{:?} is not valid UTF-8", String::from_utf8_lossy(bytes)))
}

/// An I/O error as [`SourceError::Io`], anything else as malformed Parquet;
/// `context` (where in the file, or empty) prefixes the parser's message.
fn read_error(source_name: &str, context: &str, e: ParquetError) -> SourceError {
    let detail = match e {
        ParquetError::External(inner) => match inner.downcast::<std::io::Error>() {
            Ok(error) => {
                return SourceError::Io {
                    path: source_name.to_owned(),
                    error: *error,
                };
            }
            Err(inner) => inner.to_string(),
        },
        ParquetError::General(message) => message,
        ParquetError::EOF(message) => format!("unexpected end of data: {message}"),
        other => other.to_string(),
    };
    SourceError::Malformed {
        source_name: source_name.to_owned(),
        format: "Parquet",
        detail: format!("{context}{detail}"),
    }
}

/// Refuses, naming `column`, a codec this build cannot decompress (only the
/// `snap` feature of the parquet crate is enabled), so the load stops before
/// any row rather than at the first page of that column.
fn check_codec(column: &str, codec: Compression) -> Result<(), String> {
    // The name as writers' options spell it.
    let name = match codec {
        Compression::UNCOMPRESSED | Compression::SNAPPY => return Ok(()),
        Compression::GZIP(_) => "gzip",
        Compression::LZO => "lzo",
        Compression::BROTLI(_) => "brotli",
        Compression::LZ4 | Compression::LZ4_RAW => "lz4",
        Compression::ZSTD(_) => "zstd",
    };
    Err(format!(
        "column \"{column}\" is compressed with {name}, which this reader does not support; \
         write the file with snappy (pyarrow's default) or no compression"
    ))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use parquet::data_type::{
        BoolType, ByteArrayType, DataType, DoubleType, FloatType, Int32Type, Int64Type,
    };
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::{SerializedColumnWriter, SerializedFileWriter};
    use parquet::schema::parser::parse_message_type;

    use crate::source::{KEY_SEPARATOR, SourceRow};
    use parquet::schema::types::SchemaDescriptor;

    use super::*;
    use crate::definitions::FeatureDefinitions;

    /// A compound key and a feature of every type.
    const ACCOUNTS: &str = r#"
[[entity]]
name = "account"
keys = ["region", "account_id"]

[[static_view]]
name = "account_profile"
entity = "account"
refresh_job = "account_daily"
max_age = "36h"

[[static_view.feature]]
name = "score"
type = "float32"
default = 0

[[static_view.feature]]
name = "balance"
type = "float64"
default = 0

[[static_view.feature]]
name = "age_days"
type = "int64"
default = 1

[[static_view.feature]]
name = "active"
type = "bool"
default = false

[[static_view.feature]]
name = "tier"
type = "string"
default = "none"
"#;

    /// One column's cells, None for a null.
    enum Data {
        Bool(Vec<Option<bool>>),
        I32(Vec<Option<i32>>),
        I64(Vec<Option<i64>>),
        F32(Vec<Option<f32>>),
        F64(Vec<Option<f64>>),
        Str(Vec<Option<String>>),
        /// A three-level list of optional floats (outer and element optional).
        F32List(Vec<Option<Vec<Option<f32>>>>),
    }

    impl Data {
        fn text(cells: &[Option<&str>]) -> Data {
            Data::Str(cells.iter().map(|c| c.map(str::to_owned)).collect())
        }

        fn len(&self) -> usize {
            match self {
                Data::Bool(v) => v.len(),
                Data::I32(v) => v.len(),
                Data::I64(v) => v.len(),
                Data::F32(v) => v.len(),
                Data::F64(v) => v.len(),
                Data::Str(v) => v.len(),
                Data::F32List(v) => v.len(),
            }
        }
    }

    /// A file in the temp dir, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str) -> TempFile {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            TempFile(
                std::env::temp_dir()
                    .join(format!("mlgw-parquet-{}-{n}-{name}", std::process::id())),
            )
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn put<T: DataType>(
        column: &mut SerializedColumnWriter<'_>,
        cells: &[Option<T::T>],
        levels: &ColumnDescriptor,
    ) where
        T::T: Clone,
    {
        let values: Vec<T::T> = cells.iter().flatten().cloned().collect();
        let defs: Vec<i16> = cells.iter().map(|c| i16::from(c.is_some())).collect();
        // A repeated column gets one value per row: every one starts a record.
        let reps = vec![0; cells.len()];
        column
            .typed::<T>()
            .write_batch(
                &values,
                (levels.max_def_level() > 0).then_some(&defs[..]),
                (levels.max_rep_level() > 0).then_some(&reps[..]),
            )
            .unwrap();
    }

    /// Writes `columns` under `schema` (a message type) with at most
    /// `group_rows` rows per row group.
    fn write_with(
        name: &str,
        schema: &str,
        columns: &[Data],
        group_rows: usize,
        props: WriterProperties,
    ) -> TempFile {
        let file = TempFile::new(name);
        let schema = Arc::new(parse_message_type(schema).unwrap());
        let descr = SchemaDescriptor::new(Arc::clone(&schema));
        let rows = columns.first().map_or(0, Data::len);
        let mut writer =
            SerializedFileWriter::new(File::create(&file.0).unwrap(), schema, Arc::new(props))
                .unwrap();
        let mut start = 0;
        while start < rows {
            let end = rows.min(start + group_rows);
            let mut group = writer.next_row_group().unwrap();
            for (i, data) in columns.iter().enumerate() {
                let levels = descr.column(i);
                let mut column = group.next_column().unwrap().unwrap();
                match data {
                    Data::Bool(v) => put::<BoolType>(&mut column, &v[start..end], &levels),
                    Data::I32(v) => put::<Int32Type>(&mut column, &v[start..end], &levels),
                    Data::I64(v) => put::<Int64Type>(&mut column, &v[start..end], &levels),
                    Data::F32(v) => put::<FloatType>(&mut column, &v[start..end], &levels),
                    Data::F64(v) => put::<DoubleType>(&mut column, &v[start..end], &levels),
                    Data::F32List(v) => {
                        let (mut values, mut defs, mut reps) = (Vec::new(), Vec::new(), Vec::new());
                        for row in &v[start..end] {
                            match row {
                                None => (defs.push(0), reps.push(0)),
                                Some(items) if items.is_empty() => (defs.push(1), reps.push(0)),
                                Some(items) => {
                                    for (j, item) in items.iter().enumerate() {
                                        reps.push(i16::from(j > 0));
                                        defs.push(if item.is_some() { 3 } else { 2 });
                                        values.extend(item);
                                    }
                                    continue;
                                }
                            };
                        }
                        column
                            .typed::<FloatType>()
                            .write_batch(&values, Some(&defs), Some(&reps))
                            .unwrap();
                    }
                    Data::Str(v) => {
                        let bytes: Vec<Option<ByteArray>> = v[start..end]
                            .iter()
                            .map(|s| s.as_deref().map(ByteArray::from))
                            .collect();
                        put::<ByteArrayType>(&mut column, &bytes, &levels);
                    }
                }
                column.close().unwrap();
            }
            group.close().unwrap();
            start = end;
        }
        writer.close().unwrap();
        file
    }

    fn write(name: &str, schema: &str, columns: &[Data], group_rows: usize) -> TempFile {
        write_with(
            name,
            schema,
            columns,
            group_rows,
            WriterProperties::default(),
        )
    }

    fn fraud() -> FeatureDefinitions {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("definitions/fraud.toml");
        FeatureDefinitions::load(&path).unwrap()
    }

    fn accounts() -> FeatureDefinitions {
        FeatureDefinitions::parse(ACCOUNTS, Path::new("accounts.toml")).unwrap()
    }

    fn open_in(
        defs: &FeatureDefinitions,
        view: &str,
        file: &TempFile,
    ) -> Result<ParquetRows, SourceError> {
        let view = defs.view(view).unwrap();
        let entity = defs.entity(&view.entity).unwrap();
        ParquetRows::open(view, entity, &file.0)
    }

    /// Opens `file` as a `customer_profile` file and reads every row.
    fn load(file: &TempFile) -> Result<Vec<SourceItem>, SourceError> {
        open_in(&fraud(), "customer_profile", file)?.collect()
    }

    fn row(item: &SourceItem) -> &SourceRow {
        match item {
            SourceItem::Row(r) => r,
            SourceItem::Rejected(r) => panic!("rejected: {r:?}"),
        }
    }

    fn rejected(items: &[SourceItem]) -> Vec<(u64, String)> {
        items
            .iter()
            .filter_map(|i| match i {
                SourceItem::Rejected(r) => Some((r.line, r.reason.clone())),
                SourceItem::Row(_) => None,
            })
            .collect()
    }

    #[test]
    fn every_type_round_trips_nulls_are_absent_and_compound_keys_join() {
        let file = write(
            "types.parquet",
            "message m {
                required binary region (UTF8);
                required int64 account_id;
                optional float score;
                optional double balance;
                optional int64 age_days;
                optional boolean active;
                optional binary tier (STRING);
            }",
            &[
                Data::text(&[Some("eu"), Some("us"), Some("eu")]),
                Data::I64(vec![Some(7), Some(-8), Some(9)]),
                Data::F32(vec![Some(0.25), None, Some(-1.5)]),
                Data::F64(vec![Some(1e300), Some(-2.5), None]),
                Data::I64(vec![Some(i64::MAX), None, Some(0)]),
                Data::Bool(vec![Some(true), Some(false), None]),
                Data::text(&[Some("gold"), None, Some("")]),
            ],
            2,
        );
        let defs = accounts();
        let items: Vec<SourceItem> = open_in(&defs, "account_profile", &file)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(items.len(), 3);
        let rows: Vec<&SourceRow> = items.iter().map(row).collect();
        let sep = KEY_SEPARATOR;
        assert_eq!(rows[0].entity_key, format!("eu{sep}7"));
        assert_eq!(rows[1].entity_key, format!("us{sep}-8"));
        assert_eq!(
            rows.iter().map(|r| r.line).collect::<Vec<_>>(),
            [1, 2, 3],
            "row numbers run on across row groups"
        );
        let expected_first: BTreeMap<String, FeatureValue> = [
            ("score", FeatureValue::Float32(0.25)),
            ("balance", FeatureValue::Float64(1e300)),
            ("age_days", FeatureValue::Int64(i64::MAX)),
            ("active", FeatureValue::Bool(true)),
            ("tier", FeatureValue::String("gold".to_owned())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(rows[0].values, expected_first);
        let names = |r: &SourceRow| r.values.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(rows[1]), ["active", "balance"], "nulls are absent");
        assert_eq!(names(rows[2]), ["age_days", "score", "tier"]);
        assert_eq!(rows[1].values["active"], FeatureValue::Bool(false));
        assert_eq!(rows[2].values["tier"], FeatureValue::String(String::new()));
    }

    #[test]
    fn narrower_columns_widen_to_the_declared_type() {
        let file = write(
            "widen.parquet",
            "message m {
                required binary region (UTF8);
                required int32 account_id (UINT_32);
                required float balance;
                required int32 age_days (INTEGER(32,false));
            }",
            &[
                Data::text(&[Some("eu")]),
                Data::I32(vec![Some(-1)]),
                Data::F32(vec![Some(0.5)]),
                Data::I32(vec![Some(-2)]),
            ],
            10,
        );
        let items = open_in(&accounts(), "account_profile", &file)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let r = row(&items[0]);
        assert_eq!(
            r.entity_key,
            format!("eu{KEY_SEPARATOR}4294967295"),
            "UINT_32 key"
        );
        assert_eq!(r.values["balance"], FeatureValue::Float64(0.5));
        assert_eq!(r.values["age_days"], FeatureValue::Int64(4_294_967_294));
    }

    #[test]
    fn integer_key_columns_are_rendered_in_decimal() {
        let file = write(
            "int_key.parquet",
            "message m { required int64 customer_id; optional int32 account_age_days (INT_16); }",
            &[
                Data::I64(vec![Some(42), Some(-3)]),
                Data::I32(vec![Some(420), None]),
            ],
            10,
        );
        let items = load(&file).unwrap();
        assert_eq!(row(&items[0]).entity_key, "42");
        assert_eq!(row(&items[1]).entity_key, "-3");
        assert_eq!(
            row(&items[0]).values["account_age_days"],
            FeatureValue::Int64(420)
        );
        assert!(row(&items[1]).values.is_empty());
    }

    #[test]
    fn open_picks_the_parquet_reader_by_extension() {
        let defs = fraud();
        let view = defs.view("customer_profile").unwrap();
        let entity = defs.entity("customer").unwrap();
        for name in ["profile.parquet", "profile.PQ"] {
            let file = write(
                name,
                "message m { required binary customer_id (UTF8); required int64 txn_count_30d; }",
                &[Data::text(&[Some("c-1")]), Data::I64(vec![Some(12)])],
                10,
            );
            let items: Vec<SourceItem> = super::super::open(view, entity, &file.0)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(row(&items[0]).entity_key, "c-1");
            assert_eq!(
                row(&items[0]).values["txn_count_30d"],
                FeatureValue::Int64(12)
            );
        }
    }

    #[test]
    fn schema_errors_name_the_file_and_column() {
        let id = || Data::text(&[Some("c-1")]);
        let int = || Data::I64(vec![Some(3)]);
        let cases = [
            (
                "message m { required binary customer_id (UTF8); required int64 age; }",
                vec![id(), int()],
                "column \"age\" is not a key of entity \"customer\" nor a feature of view \"customer_profile\"",
            ),
            (
                "message m { required int64 account_age_days; }",
                vec![int()],
                "lacks key column \"customer_id\"",
            ),
            (
                "message m { required binary customer_id (UTF8); required binary customer_id (UTF8); }",
                vec![id(), id()],
                "column \"customer_id\" appears twice",
            ),
        ];
        for (schema, columns, needle) in cases {
            let file = write("schema.parquet", schema, &columns, 10);
            let err = load(&file).map(|_| ()).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with(&file.0.display().to_string()), "{text}");
            assert!(text.contains(needle), "{text:?} should contain {needle:?}");
        }
    }

    #[test]
    fn a_column_that_cannot_hold_its_type_is_refused_before_any_row() {
        let id = || Data::text(&[Some("c-1")]);
        let cases = [
            (
                "message m { required binary customer_id (UTF8); required double avg_txn_amount_30d; }",
                vec![id(), Data::F64(vec![Some(1.0)])],
                "column \"avg_txn_amount_30d\" has Parquet type DOUBLE, which cannot hold a float32 feature",
            ),
            (
                "message m { required binary customer_id (UTF8); required int64 txn_count_30d (INTEGER(64,false)); }",
                vec![id(), Data::I64(vec![Some(1)])],
                "column \"txn_count_30d\" has Parquet type INT64 (INT(64, unsigned)), which cannot hold a int64 feature",
            ),
            (
                "message m { required binary customer_id (UTF8); required int64 txn_count_30d (UINT_64); }",
                vec![id(), Data::I64(vec![Some(1)])],
                "column \"txn_count_30d\" has Parquet type INT64 (UINT_64)",
            ),
            (
                "message m { required binary customer_id (UTF8); required int64 account_age_days (TIMESTAMP_MICROS); }",
                vec![id(), Data::I64(vec![Some(1)])],
                "column \"account_age_days\" has Parquet type INT64 (TIMESTAMP_MICROS)",
            ),
            (
                "message m { required binary customer_id (UTF8); required float account_age_days; }",
                vec![id(), Data::F32(vec![Some(1.0)])],
                "column \"account_age_days\" has Parquet type FLOAT, which cannot hold a int64 feature",
            ),
            (
                "message m { required binary customer_id; }",
                vec![id()],
                "key column \"customer_id\" has Parquet type BYTE_ARRAY (binary, not annotated as UTF-8 text); key columns must hold UTF-8 text or integers",
            ),
            (
                "message m { required double customer_id; }",
                vec![Data::F64(vec![Some(1.0)])],
                "key column \"customer_id\" has Parquet type DOUBLE;",
            ),
            (
                "message m { required binary customer_id (UTF8); repeated int64 txn_count_30d; }",
                vec![id(), Data::I64(vec![Some(1)])],
                "column \"txn_count_30d\" has Parquet type repeated INT64",
            ),
        ];
        for (schema, columns, needle) in cases {
            let file = write("types.parquet", schema, &columns, 10);
            let err = load(&file).map(|_| ()).unwrap_err();
            assert!(
                matches!(
                    err,
                    SourceError::ColumnType { .. } | SourceError::KeyColumnType { .. }
                ),
                "{err:?}"
            );
            let text = err.to_string();
            assert!(text.starts_with(&file.0.display().to_string()), "{text}");
            assert!(text.contains(needle), "{text:?} should contain {needle:?}");
        }
    }

    #[test]
    fn bad_rows_are_rejected_with_row_number_and_reason_and_the_rest_loads() {
        let file = write(
            "bad_rows.parquet",
            "message m {
                optional binary customer_id (UTF8);
                optional float avg_txn_amount_30d;
                optional int64 account_age_days;
            }",
            &[
                Data::text(&[
                    Some("c-1"),
                    None,
                    Some("c-3"),
                    Some(""),
                    Some("c-5"),
                    Some("c-6"),
                ]),
                Data::F32(vec![
                    Some(1.0),
                    Some(2.0),
                    Some(f32::NAN),
                    Some(f32::NAN),
                    Some(f32::INFINITY),
                    None,
                ]),
                Data::I64(vec![Some(1), Some(2), Some(3), Some(4), Some(5), Some(6)]),
            ],
            4,
        );
        let items = load(&file).unwrap();
        assert_eq!(
            rejected(&items),
            [
                (2, "key column \"customer_id\" is empty".to_owned()),
                (
                    3,
                    "column \"avg_txn_amount_30d\": NaN is not a valid float32".to_owned()
                ),
                (4, "key column \"customer_id\" is empty".to_owned()),
                (
                    5,
                    "column \"avg_txn_amount_30d\": inf is not a valid float32".to_owned()
                ),
            ]
        );
        let (first, last) = (row(&items[0]), row(&items[5]));
        assert_eq!((first.entity_key.as_str(), first.line), ("c-1", 1));
        assert_eq!(first.values["account_age_days"], FeatureValue::Int64(1));
        assert_eq!((last.entity_key.as_str(), last.line), ("c-6", 6));
        assert_eq!(
            last.values["account_age_days"],
            FeatureValue::Int64(6),
            "columns stay in step after rejected rows"
        );
    }

    #[test]
    fn rows_stream_across_batches_and_row_groups_with_snappy_and_dictionaries() {
        const ROWS: usize = 10_000;
        let ids = (0..ROWS).map(|i| Some(format!("c-{}", i % 50))).collect();
        let counts: Vec<Option<i64>> = (0..ROWS)
            .map(|i| (i % 7 != 0).then_some(i as i64))
            .collect();
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_dictionary_enabled(true)
            .set_data_page_row_count_limit(1000)
            .build();
        let file = write_with(
            "many.parquet",
            "message m { required binary customer_id (UTF8); optional int64 txn_count_30d; }",
            &[Data::Str(ids), Data::I64(counts)],
            3000,
            props,
        );
        let items = load(&file).unwrap();
        assert_eq!(items.len(), ROWS);
        for (i, item) in items.iter().enumerate() {
            let r = row(item);
            assert_eq!(r.line, i as u64 + 1);
            assert_eq!(r.entity_key, format!("c-{}", i % 50));
            let count = r.values.get("txn_count_30d");
            let expected = (i % 7 != 0).then_some(FeatureValue::Int64(i as i64));
            assert_eq!(count, expected.as_ref(), "row {}", i + 1);
        }
    }

    #[test]
    fn an_unreadable_or_corrupt_file_is_an_error() {
        let missing = TempFile::new("missing.parquet");
        let err = load(&missing).map(|_| ()).unwrap_err();
        assert!(matches!(err, SourceError::Io { .. }), "{err:?}");

        let garbage = TempFile::new("garbage.parquet");
        std::fs::write(&garbage.0, "customer_id\nc-1\n").unwrap();
        let err = load(&garbage).map(|_| ()).unwrap_err();
        assert!(
            matches!(
                err,
                SourceError::Malformed {
                    format: "Parquet",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with(&garbage.0.display().to_string()),
            "{err}"
        );

        // A good footer over clobbered pages: the schema checks pass, reading fails.
        let file = write(
            "clobbered.parquet",
            "message m { required binary customer_id (UTF8); required int64 txn_count_30d; }",
            &[
                Data::text(&[Some("c-1"), Some("c-2")]),
                Data::I64(vec![Some(1), Some(2)]),
            ],
            10,
        );
        let mut bytes = std::fs::read(&file.0).unwrap();
        bytes[4..40].fill(0xff);
        std::fs::write(&file.0, &bytes).unwrap();
        let mut rows = open_in(&fraud(), "customer_profile", &file).unwrap();
        let err = rows.next().unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                SourceError::Malformed {
                    format: "Parquet",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("row group 0"), "{err}");
        assert!(rows.next().is_none(), "the reader stops after an error");
    }

    #[test]
    fn codecs_other_than_snappy_are_refused_by_name() {
        assert_eq!(check_codec("x", Compression::SNAPPY), Ok(()));
        assert_eq!(check_codec("x", Compression::UNCOMPRESSED), Ok(()));
        let err = check_codec("x", Compression::ZSTD(Default::default())).unwrap_err();
        assert!(
            err.starts_with("column \"x\" is compressed with zstd, which this reader"),
            "{err}"
        );
    }

    #[test]
    fn the_reader_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<ParquetRows>();
    }

    #[test]
    fn float_lists_load_as_vectors_and_bad_ones_are_rejected_with_the_reason() {
        let defs = FeatureDefinitions::parse(
            "[[entity]]\nname = \"merchant\"\nkeys = [\"merchant_id\"]\n\n\
             [[static_view]]\nname = \"emb\"\nentity = \"merchant\"\nrefresh_job = \"j\"\nmax_age = \"1d\"\n\n\
             [[static_view.feature]]\nname = \"embedding\"\ntype = \"vector(3)\"\ndefault = 0.0\n",
            Path::new("emb.toml"),
        )
        .unwrap();
        let schema = "message m { required binary merchant_id (UTF8); \
                      optional group embedding (LIST) { repeated group list { optional float element; } } }";
        let ids = ["m-1", "m-2", "m-3", "m-4", "m-5", "m-6"];
        let lists = vec![
            Some(vec![Some(0.5), Some(-1.0), Some(2.0)]),
            None,
            Some(vec![Some(1.0), Some(2.0)]),
            Some(vec![Some(1.0), None, Some(3.0)]),
            Some(vec![Some(1.0), Some(f32::INFINITY), Some(3.0)]),
            Some(vec![Some(7.0), Some(8.0), Some(9.0)]),
        ];
        // Two rows per row group: lists cross batch and group boundaries.
        let file = write(
            "lists.parquet",
            schema,
            &[Data::text(&ids.map(Some)), Data::F32List(lists)],
            2,
        );
        let items: Vec<SourceItem> = open_in(&defs, "emb", &file)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(items.len(), 6);
        assert_eq!(
            row(&items[0]).values.get("embedding"),
            Some(&FeatureValue::Vector(vec![0.5, -1.0, 2.0]))
        );
        // A null list is no value: the default applies when read.
        assert!(row(&items[1]).values.is_empty());
        assert_eq!(
            rejected(&items),
            vec![
                (
                    3,
                    "column \"embedding\": the list has 2 components; the feature is vector(3)"
                        .to_owned()
                ),
                (4, "column \"embedding\": component 2 is null".to_owned()),
                (
                    5,
                    "column \"embedding\": component 2 is inf, not a finite number".to_owned()
                ),
            ]
        );
        assert_eq!(
            row(&items[5]).values.get("embedding"),
            Some(&FeatureValue::Vector(vec![7.0, 8.0, 9.0]))
        );
        // A list of doubles would lose precision: refused, naming the column.
        let doubles = "message m { required binary merchant_id (UTF8); \
                       optional group embedding (LIST) { repeated group list { optional double element; } } }";
        let file = write(
            "doubles.parquet",
            doubles,
            &[Data::text(&[Some("m-1")]), Data::F64(vec![None])],
            1,
        );
        let err = open_in(&defs, "emb", &file)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("embedding") && err.contains("list"), "{err}");
    }
}
