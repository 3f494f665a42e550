//! Chart artifacts of `process/code-run` (Daytona's chart protocol): the
//! typed `Chart` and `ChartElement` the SDKs parse from
//! `artifacts.charts`, and the parsing of what the Python driver
//! (`code_run.py`) writes on its side channel: one JSON line per chart,
//! `{"type":"chart","value":{...}}`.
//!
//! The channel is writable by the user's code, so every record is checked
//! against these types (field names and JSON types exactly as the SDKs'
//! models declare them: a bar's `value` is a string, points are pairs of
//! numbers); a record that does not fit is dropped, never passed on to make
//! an SDK's validation fail.

use serde::{Deserialize, Serialize};

/// Most bytes of chart records read from one run (PNGs included).
pub const CHART_BYTES_LIMIT: usize = 32 * 1024 * 1024;

/// One chart: a figure with one axes, or a `composite_chart` whose
/// elements are the sub-charts of its axes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chart {
    /// `line`, `scatter`, `bar`, `pie`, `box_and_whisker`,
    /// `composite_chart` or `unknown`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The figure as a base64 PNG.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub png: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_ticks: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y_ticks: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_tick_labels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y_tick_labels: Option<Vec<String>>,
    /// `linear`, `log`, ..., `categorical` or `datetime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_scale: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y_scale: Option<String>,
    #[serde(default)]
    pub elements: Vec<ChartElement>,
}

/// One data element (a line or point series, a bar, a pie wedge, a box) or,
/// in a composite chart, one sub-chart (`type`, `title`, labels and, as an
/// Atoll extension, its own `elements`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChartElement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Line and scatter: `[x, y]` pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points: Option<Vec<[f64; 2]>>,
    /// Bar: the bar's value, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Bar: the series the bar belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Pie: the wedge's angle in degrees, and its radius.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub angle: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radius: Option<f64>,
    /// Box and whisker: the box's statistics and outliers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_quartile: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub third_quartile: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outliers: Option<Vec<f64>>,
    /// Composite chart: the sub-chart's type, title and axis labels.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub png: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elements: Option<Vec<ChartElement>>,
}

/// One record of the side channel.
#[derive(Debug, Deserialize)]
struct Artifact {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    value: serde_json::Value,
}

/// The charts among the side channel's records, in order; lines that are
/// not a well-formed chart record are skipped.
pub fn parse(side_channel: &[u8]) -> Vec<Chart> {
    side_channel
        .split(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .filter_map(|line| match serde_json::from_slice::<Artifact>(line) {
            Ok(a) if a.kind == "chart" => match serde_json::from_value::<Chart>(a.value) {
                Ok(chart) => Some(chart),
                Err(e) => {
                    tracing::debug!(error = %e, "dropping a malformed chart");
                    None
                }
            },
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, "dropping a malformed code-run artifact");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_chart_records_and_skips_everything_else() {
        let line = json!({"type": "chart", "value": {
            "type": "line", "title": "Sine", "png": "iVBORw0KGgo=",
            "x_label": "x", "y_label": "y",
            "x_ticks": [0.0, 5.0], "x_tick_labels": ["0", "5"], "x_scale": "linear",
            "elements": [{"label": "sin", "points": [[0.0, 0.0], [1.5, 0.997]]}],
        }});
        let bar = json!({"type": "chart", "value": {
            "type": "bar", "title": "Sales",
            "elements": [{"label": "A", "group": "2024", "value": "40"}],
        }});
        let input = format!(
            "{line}\n\nnot json\n{}\n{}\n{}\n{bar}",
            json!({"type": "other", "value": 1}),
            // A bar value must be a string for the SDKs: dropped.
            json!({"type": "chart", "value": {"type": "bar", "elements": [{"value": 40}]}}),
            json!({"type": "chart", "value": {"type": "line", "elements": [{"points": [[1]]}]}}),
        );
        let charts = parse(input.as_bytes());
        assert_eq!(charts.len(), 2);
        assert_eq!(charts[0].kind, "line");
        assert_eq!(charts[0].title.as_deref(), Some("Sine"));
        assert_eq!(
            charts[0].elements[0].points,
            Some(vec![[0.0, 0.0], [1.5, 0.997]])
        );
        assert_eq!(charts[1].elements[0].value.as_deref(), Some("40"));
        assert_eq!(charts[1].elements[0].group.as_deref(), Some("2024"));
        // Serialised back with only the fields that are set.
        assert_eq!(
            serde_json::to_value(&charts[1]).unwrap(),
            json!({"type": "bar", "title": "Sales",
                   "elements": [{"label": "A", "group": "2024", "value": "40"}]})
        );
    }

    #[test]
    fn composite_charts_keep_their_sub_charts() {
        let input = json!({"type": "chart", "value": {
            "type": "composite_chart", "title": "Both", "png": "x",
            "elements": [
                {"type": "pie", "title": "Share", "elements": [{"label": "a", "angle": 90.0, "radius": 1.0}]},
                {"type": "box_and_whisker", "title": "Spread", "x_label": "group",
                 "elements": [{"label": "a", "min": 1.0, "first_quartile": 2.0, "median": 3.0,
                               "third_quartile": 4.0, "max": 5.0, "outliers": [9.0]}]},
            ],
        }})
        .to_string();
        let charts = parse(input.as_bytes());
        assert_eq!(charts.len(), 1);
        let sub = &charts[0].elements;
        assert_eq!(sub[0].kind.as_deref(), Some("pie"));
        let wedges = sub[0].elements.as_ref().unwrap();
        assert_eq!(wedges[0].angle, Some(90.0));
        let boxes = sub[1].elements.as_ref().unwrap();
        assert_eq!(boxes[0].median, Some(3.0));
        assert_eq!(boxes[0].outliers, Some(vec![9.0]));
    }
}
