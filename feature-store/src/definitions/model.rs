//! What a model needs: its input tensor, the ordered features that become its
//! columns, and the views those features come from.

use std::fmt;

use serde::Deserialize;

use super::value::FeatureType;

/// Element type of a model's input tensor (`dtype = "FP32"`), named as in the
/// Open Inference Protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum InputDtype {
    /// 32-bit float: every numeric and bool feature converts to it.
    #[serde(rename = "FP32")]
    Fp32,
}

impl InputDtype {
    /// The Open Inference Protocol name.
    pub fn as_str(self) -> &'static str {
        match self {
            InputDtype::Fp32 => "FP32",
        }
    }

    /// Whether a feature of type `ty` can become a column of this dtype.
    pub fn accepts(self, ty: FeatureType) -> bool {
        match self {
            InputDtype::Fp32 => !matches!(ty, FeatureType::String | FeatureType::Vector(_)),
        }
    }
}

impl fmt::Display for InputDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the value of one input column comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnSource {
    /// A feature of the named static view (read by entity key, cached).
    StaticView(String),
    /// A feature of the named dynamic view (read by entity key, fresh).
    DynamicView(String),
    /// A request feature sent by the caller.
    Request,
}

/// One column of a model's input tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct InputColumn {
    /// The feature name; unique within the input.
    pub name: String,
    /// The reference as written in the file: `view.feature` or `request.name`.
    pub reference: String,
    /// Where the value comes from.
    pub source: ColumnSource,
    /// The feature's declared type, before conversion to the input dtype.
    pub feature_type: FeatureType,
    /// The default converted to the input dtype; None for a required request
    /// feature (which has no default).
    pub default: Option<f32>,
}

/// A model's input tensor: name, dtype and ordered columns.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInput {
    pub(super) name: String,
    pub(super) dtype: InputDtype,
    pub(super) columns: Vec<InputColumn>,
    pub(super) default_row: Vec<f32>,
}

impl ModelInput {
    /// The tensor name the model expects (e.g. `features`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tensor's element type.
    pub fn dtype(&self) -> InputDtype {
        self.dtype
    }

    /// The columns in tensor order: column `i` of a row is `columns()[i]`.
    pub fn columns(&self) -> &[InputColumn] {
        &self.columns
    }

    /// Number of columns (the tensor's second dimension).
    pub fn width(&self) -> usize {
        self.columns.len()
    }

    /// The column index of a feature, by its reference (`customer_profile.account_age_days`,
    /// `request.amount`).
    pub fn column_index(&self, reference: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.reference == reference)
    }

    /// The column index of a feature, by its name alone (names are unique within an input).
    pub fn column_index_by_name(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The columns filled from the view called `view`, with their indexes.
    pub fn columns_from_view<'a>(
        &'a self,
        view: &'a str,
    ) -> impl Iterator<Item = (usize, &'a InputColumn)> + 'a {
        self.columns
            .iter()
            .enumerate()
            .filter(move |(_, c)| match &c.source {
                ColumnSource::StaticView(v) | ColumnSource::DynamicView(v) => v == view,
                ColumnSource::Request => false,
            })
    }

    /// One row holding every column's default, ready to copy before filling in
    /// the values found. Required request columns hold NaN: they have no
    /// default, and a model input that does not allow NaN refuses a row where
    /// one was left unfilled instead of scoring it.
    pub fn default_row(&self) -> &[f32] {
        &self.default_row
    }
}

/// Everything the feature store must provide for one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFeatures {
    pub(super) name: String,
    pub(super) input: ModelInput,
    pub(super) entities: Vec<String>,
    pub(super) static_views: Vec<String>,
    pub(super) dynamic_views: Vec<String>,
}

impl ModelFeatures {
    /// The model name, as in the model repository.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The input tensor assembled from features.
    pub fn input(&self) -> &ModelInput {
        &self.input
    }

    /// The entities whose keys a request must carry, in first-use order.
    pub fn entities(&self) -> &[String] {
        &self.entities
    }

    /// The static views the model reads, in first-use order.
    pub fn static_views(&self) -> &[String] {
        &self.static_views
    }

    /// The dynamic views the model reads, in first-use order.
    pub fn dynamic_views(&self) -> &[String] {
        &self.dynamic_views
    }
}
