//! `cascadia calibrate`: reads a calibration set, certifies the widest band
//! whose recall drop stays within the target with high probability, prints
//! the trade-off, and writes the calibration artifact (and an SVG of the
//! curve) that a route's `[routes.cascade] calibration` then loads.
//!
//! Input files (the model's features by name, or in model order):
//! - **CSV** with a header: every model feature by name, plus `label`
//!   (0/1) and/or `stage2` (stage 2's probability). Other columns are
//!   ignored. Plain comma-separated numbers: quoted fields are not read.
//! - **JSON Lines**, as the gateway records traffic: `{"features": [...],
//!   "stage1": p, "stage2": q}` per line, features in model order; or the
//!   same rows read from the Redis stream the gateway records to.
//! - **`.npy`**: a 2-D `<f8` or `<f4` array, C order, the features in model
//!   order followed by the columns `--npy-columns` names.
//!
//! Stage 1's scores are always recomputed from the model, so the artifact
//! describes exactly the model whose hash it carries.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use cascadia_cascade::calibrate::{
    self, Artifact, ArtifactBand, ArtifactData, ArtifactModel, ArtifactResult, ArtifactTarget,
    CalibrationRow, Certified, CurvePoint,
};
use cascadia_cascade::LogisticModel;

/// Most bytes a calibration file may have: rows are read into memory.
const MAX_DATA_BYTES: u64 = 1 << 30;

/// What positive means in the guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Truth {
    /// The `label` column (stage 2's score, when present, says what stage 2
    /// would catch; without it stage 2 is taken to catch every positive).
    Label,
    /// Stage 2's answer (`stage2` ≥ `--stage2-threshold`).
    Stage2,
}

/// The command's inputs (`cascadia calibrate --help`).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The stage-1 model artifact (JSON from tools/export_logistic.py).
    #[arg(long)]
    pub model: PathBuf,
    /// The calibration rows: .csv (a header naming the model's
    /// features, `label` and/or `stage2`), .jsonl (recorded traffic) or
    /// .npy (features in model order, then `--npy-columns`).
    #[arg(
        long,
        required_unless_present = "redis_stream",
        conflicts_with = "redis_stream"
    )]
    pub data: Option<PathBuf>,
    /// Read the rows from the Redis stream a route records to
    /// (`[routes.cascade.record] redis_stream`) instead of a file.
    #[arg(long, requires = "redis_url")]
    pub redis_stream: Option<String>,
    /// The Redis server of `--redis-stream` (redis:// or rediss://).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// The share of positives stage 2 would catch that the cascade may
    /// miss (e.g. 0.005 for half a point).
    #[arg(long)]
    pub max_recall_drop: f64,
    /// Probability, over the calibration draw, that the band keeps the
    /// target (1 − δ).
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
    /// Refuse a band that escalates more than this share of rows.
    #[arg(long)]
    pub max_escalation: Option<f64>,
    /// What a positive is (default: the label when the data has one).
    #[arg(long, value_enum)]
    pub truth: Option<Truth>,
    /// Stage 2 calls a row positive at this probability or above.
    #[arg(long, default_value_t = 0.5)]
    pub stage2_threshold: f64,
    /// Names of the .npy columns after the features.
    #[arg(long, value_delimiter = ',', default_value = "label")]
    pub npy_columns: Vec<String>,
    /// Where the calibration artifact goes.
    #[arg(long)]
    pub out: PathBuf,
    /// Also draw local share against recall drop, with the bound.
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

/// Most rows read from a Redis stream, and per `XRANGE`.
const MAX_STREAM_ROWS: usize = 10_000_000;
const STREAM_PAGE: usize = 10_000;

/// An `XRANGE` page: entry ids and their fields.
type StreamPage = Vec<(String, Vec<(String, Vec<u8>)>)>;

/// Reads a recorded stream's rows as JSON Lines (oldest first), bounded in
/// rows and bytes.
pub async fn read_stream(url: &str, key: &str) -> Result<Vec<u8>, String> {
    let client = redis::Client::open(url)
        .map_err(|e| format!("{}: {e}", cascadia_config::redact_url(url)))?;
    let mut connection = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| "Redis did not answer within 10 s".to_owned())?
    .map_err(|e| format!("cannot connect to Redis: {e}"))?;
    let mut out = Vec::new();
    let mut start = "-".to_owned();
    let mut rows = 0;
    loop {
        let page: StreamPage = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            redis::cmd("XRANGE")
                .arg(key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(STREAM_PAGE)
                .query_async(&mut connection),
        )
        .await
        .map_err(|_| "Redis did not answer XRANGE within 30 s".to_owned())?
        .map_err(|e| format!("XRANGE {key}: {e}"))?;
        let Some((last, _)) = page.last() else { break };
        // The next page starts after the last id read (exclusive range).
        start = format!("({last}");
        for (_, fields) in &page {
            if let Some((_, row)) = fields.iter().find(|(name, _)| name == "row") {
                out.extend_from_slice(row);
                out.push(b'\n');
                rows += 1;
            }
        }
        if rows >= MAX_STREAM_ROWS || out.len() as u64 >= MAX_DATA_BYTES {
            return Err(format!(
                "stream {key} holds more than {MAX_STREAM_ROWS} rows or 1 GiB"
            ));
        }
        if page.len() < STREAM_PAGE {
            break;
        }
    }
    Ok(out)
}

/// One row as read: features in model order, and what the file gave.
#[derive(Debug)]
struct DataRow {
    features: Vec<f64>,
    label: Option<bool>,
    stage2: Option<f64>,
}

/// Runs the command: reads the model and the rows (a file, or a recorded
/// Redis stream), certifies, writes the artifact (and SVG); the report to
/// print, or the message to print.
pub async fn command(request: Args) -> Result<String, String> {
    let stream = match (&request.data, &request.redis_stream, &request.redis_url) {
        (Some(_), _, _) => None,
        (None, Some(key), Some(url)) => Some(read_stream(url, key).await?),
        _ => return Err("give --data, or --redis-stream with --redis-url".into()),
    };
    run(&request, stream)
}

/// [`command`] once a stream's rows are read.
fn run(request: &Args, stream: Option<Vec<u8>>) -> Result<String, String> {
    let model_bytes = cascadia_config::read_input(&request.model, 16 * 1024 * 1024)
        .map_err(|e| format!("cannot read {}: {e}", request.model.display()))?;
    let model_text = std::str::from_utf8(&model_bytes)
        .map_err(|e| format!("{}: not UTF-8: {e}", request.model.display()))?;
    let model = LogisticModel::from_json(model_text)
        .map_err(|e| format!("{}: {e}", request.model.display()))?;
    let (data_name, data_bytes, data) = match (&request.data, stream) {
        (Some(path), _) => {
            let bytes = cascadia_config::read_input(path, MAX_DATA_BYTES)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let rows = parse_data(path, &bytes, &model, &request.npy_columns)?;
            (path.display().to_string(), bytes, rows)
        }
        (None, Some(bytes)) => {
            let key = request.redis_stream.as_deref().unwrap_or_default();
            let name = format!("redis stream {key}");
            let rows = parse_jsonl(&bytes, model.width()).map_err(|e| format!("{name}: {e}"))?;
            (name, bytes, rows)
        }
        (None, None) => return Err("no calibration data".into()),
    };
    if data.is_empty() {
        return Err(format!("{data_name}: no rows"));
    }
    let has_labels = data.iter().all(|r| r.label.is_some());
    let has_stage2 = data.iter().all(|r| r.stage2.is_some());
    let truth = match request.truth {
        Some(t) => t,
        None if has_labels => Truth::Label,
        None if has_stage2 => Truth::Stage2,
        None => return Err("the data has neither a label nor a stage2 value on every row".into()),
    };
    if truth == Truth::Label && !has_labels {
        return Err("--truth label, but not every row has a label".into());
    }
    if truth == Truth::Stage2 && !has_stage2 {
        return Err("--truth stage2, but not every row has a stage2 score".into());
    }
    let threshold = request.stage2_threshold;
    let rows: Vec<CalibrationRow> = data
        .iter()
        .map(|r| {
            let stage2_positive = r.stage2.map(|q| q >= threshold);
            let positive = match truth {
                Truth::Label => r.label.unwrap_or(false),
                Truth::Stage2 => stage2_positive.unwrap_or(false),
            };
            CalibrationRow {
                score: model.score(&r.features),
                positive,
                // Without stage 2's scores, every positive counts as one
                // it would catch: the drop is then measured against labels.
                stage2_positive: stage2_positive.unwrap_or(positive),
            }
        })
        .collect();
    if let Some(bad) = rows.iter().position(|r| !r.score.is_finite()) {
        return Err(format!("row {bad}: stage 1's score is not a number"));
    }
    let delta = 1.0 - request.confidence;
    let band = calibrate::certify(
        &rows,
        request.max_recall_drop,
        delta,
        request.max_escalation,
    )
    .map_err(|e| e.to_string())?;
    let points = calibrate::curve(&rows, &band, delta, 200);
    let artifact = Artifact {
        kind: calibrate::ARTIFACT_KIND.to_owned(),
        created: rfc3339_now(),
        model: ArtifactModel {
            name: model.name.clone(),
            version: model.version.clone(),
            sha256: model.sha256.clone(),
        },
        data: ArtifactData {
            file: data_name,
            sha256: cascadia_cascade::model::sha256_hex(&data_bytes),
            rows: rows.len() as u64,
            truth: match truth {
                Truth::Label => "label",
                Truth::Stage2 => "stage2",
            }
            .to_owned(),
        },
        target: ArtifactTarget {
            max_recall_drop: request.max_recall_drop,
            confidence: request.confidence,
            max_escalation: request.max_escalation,
        },
        band: ArtifactBand {
            accept_below: band.accept_below,
            reject_above: band.reject_above,
        },
        result: ArtifactResult {
            local_share: band.local_share,
            positives: band.positives,
            misses: band.misses,
            recall_drop_bound: band.recall_drop_bound,
            negatives: band.negatives,
            false_alarms: band.false_alarms,
            false_alarm_bound: band.false_alarm_bound,
        },
        method: calibrate::METHOD.to_owned(),
    };
    let json = serde_json::to_string_pretty(&artifact).map_err(|e| e.to_string())?;
    write_file(&request.out, json.as_bytes())?;
    if let Some(svg) = &request.svg {
        write_file(
            svg,
            render_svg(&points, &band, request.max_recall_drop).as_bytes(),
        )?;
    }
    Ok(report(&artifact, &points))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    // Written beside and renamed, so a gateway watching the config never
    // reads half an artifact.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn parse_data(
    path: &Path,
    bytes: &[u8],
    model: &LogisticModel,
    npy_columns: &[String],
) -> Result<Vec<DataRow>, String> {
    let name = path.display();
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    match extension {
        "npy" => parse_npy(bytes, model.width(), npy_columns).map_err(|e| format!("{name}: {e}")),
        "jsonl" | "ndjson" => parse_jsonl(bytes, model.width()).map_err(|e| format!("{name}: {e}")),
        "csv" => parse_csv(bytes, model).map_err(|e| format!("{name}: {e}")),
        other => Err(format!(
            "{name}: unknown data format {other:?} (use .csv, .jsonl or .npy)"
        )),
    }
}

fn parse_label(text: &str) -> Result<bool, String> {
    match text.trim() {
        "1" | "1.0" | "true" | "True" => Ok(true),
        "0" | "0.0" | "false" | "False" => Ok(false),
        other => Err(format!("label {other:?} is not 0 or 1")),
    }
}

fn parse_probability(value: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("stage2 {value} is not a probability"))
    }
}

fn parse_csv(bytes: &[u8], model: &LogisticModel) -> Result<Vec<DataRow>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .ok_or("empty file")?
        .split(',')
        .map(str::trim)
        .collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let features: Vec<usize> = model
        .features
        .iter()
        .map(|f| column(f).ok_or_else(|| format!("no column for feature {f:?}")))
        .collect::<Result<_, _>>()?;
    let (label, stage2) = (column("label"), column("stage2"));
    if label.is_none() && stage2.is_none() {
        return Err("needs a label or a stage2 column".into());
    }
    lines
        .enumerate()
        .map(|(i, line)| {
            let line_no = i + 2;
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            if cells.len() != header.len() {
                return Err(format!(
                    "line {line_no}: {} cells, the header has {}",
                    cells.len(),
                    header.len()
                ));
            }
            let number = |at: usize| {
                cells[at]
                    .parse::<f64>()
                    .map_err(|_| format!("line {line_no}: {:?} is not a number", cells[at]))
            };
            Ok(DataRow {
                features: features
                    .iter()
                    .map(|&at| number(at))
                    .collect::<Result<_, _>>()?,
                label: label
                    .map(|at| parse_label(cells[at]).map_err(|e| format!("line {line_no}: {e}")))
                    .transpose()?,
                stage2: stage2
                    .map(|at| {
                        number(at).and_then(|v| {
                            parse_probability(v).map_err(|e| format!("line {line_no}: {e}"))
                        })
                    })
                    .transpose()?,
            })
        })
        .collect()
}

/// A recorded row, as [`crate::cascade`]'s recorder writes it.
#[derive(serde::Deserialize)]
struct RecordedRow {
    features: Vec<f64>,
    stage2: f64,
    #[serde(default)]
    label: Option<u8>,
}

fn parse_jsonl(bytes: &[u8], width: usize) -> Result<Vec<DataRow>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let row: RecordedRow =
                serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
            if row.features.len() != width {
                return Err(format!(
                    "line {}: {} features, the model has {width}",
                    i + 1,
                    row.features.len()
                ));
            }
            Ok(DataRow {
                features: row.features,
                label: row.label.map(|l| l == 1),
                stage2: Some(
                    parse_probability(row.stage2).map_err(|e| format!("line {}: {e}", i + 1))?,
                ),
            })
        })
        .collect()
}

/// Reads a version 1–3 `.npy` file holding a 2-D little-endian float array
/// in C order: `width` feature columns, then `extra` named columns.
fn parse_npy(bytes: &[u8], width: usize, extra: &[String]) -> Result<Vec<DataRow>, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an .npy file".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated header")?;
    let compact: String = header.chars().filter(|c| !c.is_whitespace()).collect();
    let size = if compact.contains("'descr':'<f8'") {
        8
    } else if compact.contains("'descr':'<f4'") {
        4
    } else {
        return Err("only little-endian float64 or float32 arrays are read".into());
    };
    if !compact.contains("'fortran_order':False") {
        return Err("only C-order arrays are read".into());
    }
    let shape = compact
        .split("'shape':(")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or("no shape")?;
    let dims: Vec<usize> = shape
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.parse().map_err(|_| format!("bad shape {shape:?}")))
        .collect::<Result<_, _>>()?;
    let [rows, columns] = dims[..] else {
        return Err(format!("a 2-D array is needed, shape is ({shape})"));
    };
    if columns != width + extra.len() {
        return Err(format!(
            "{columns} columns, but {width} features and {} named columns ({}) make {}",
            extra.len(),
            extra.join(","),
            width + extra.len()
        ));
    }
    let data = &bytes[start + header_len..];
    if data.len() != rows * columns * size {
        return Err("data length does not match the shape".into());
    }
    let value = |i: usize| -> f64 {
        let at = i * size;
        if size == 8 {
            f64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"))
        } else {
            f64::from(f32::from_le_bytes(
                data[at..at + 4].try_into().expect("4 bytes"),
            ))
        }
    };
    let label_at = extra.iter().position(|c| c == "label");
    let stage2_at = extra.iter().position(|c| c == "stage2");
    if label_at.is_none() && stage2_at.is_none() {
        return Err("--npy-columns must name label or stage2".into());
    }
    (0..rows)
        .map(|r| {
            let base = r * columns;
            let label = label_at
                .map(|c| {
                    let v = value(base + width + c);
                    if v == 1.0 {
                        Ok(true)
                    } else if v == 0.0 {
                        Ok(false)
                    } else {
                        Err(format!("row {r}: label {v} is not 0 or 1"))
                    }
                })
                .transpose()?;
            let stage2 = stage2_at
                .map(|c| {
                    parse_probability(value(base + width + c)).map_err(|e| format!("row {r}: {e}"))
                })
                .transpose()?;
            Ok(DataRow {
                features: (0..width).map(|c| value(base + c)).collect(),
                label,
                stage2,
            })
        })
        .collect()
}

/// The table `calibrate` prints: the certified point, then the curve.
fn report(artifact: &Artifact, points: &[CurvePoint]) -> String {
    let r = &artifact.result;
    let t = &artifact.target;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "certified band: local below {:.6} and above {:.6}",
        artifact.band.accept_below, artifact.band.reject_above
    );
    let _ = writeln!(
        out,
        "  local share {:.1}% of {} rows; recall drop {} of {} positives, bound {:.4} (target {} at confidence {})",
        100.0 * r.local_share,
        artifact.data.rows,
        r.misses,
        r.positives,
        r.recall_drop_bound,
        t.max_recall_drop,
        t.confidence
    );
    let _ = writeln!(
        out,
        "  false-alarm rise {} of {} negatives, bound {:.4}",
        r.false_alarms, r.negatives, r.false_alarm_bound
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:>14}  {:>11}  {:>6}  {:>11}  {:>9}",
        "accept_below", "local share", "misses", "recall drop", "bound"
    );
    // About twenty rows of the curve, and always the certified one.
    let every = points.len().div_ceil(20).max(1);
    for (i, p) in points.iter().enumerate() {
        let certified =
            p.misses == r.misses && (p.accept_below - artifact.band.accept_below).abs() < 1e-12;
        if i % every != 0 && !certified {
            continue;
        }
        let mark = if certified { "  <- certified" } else { "" };
        let _ = writeln!(
            out,
            "{:>14.6}  {:>10.1}%  {:>6}  {:>11.4}  {:>9.4}{mark}",
            p.accept_below,
            100.0 * p.local_share,
            p.misses,
            p.recall_drop,
            p.bound
        );
    }
    out
}

/// Local share against recall drop (observed and bounded), with the target
/// and the certified point: a self-contained SVG.
fn render_svg(points: &[CurvePoint], band: &Certified, alpha: f64) -> String {
    let (w, h, pad) = (640.0, 400.0, 56.0);
    let max_drop = points
        .iter()
        .map(|p| p.bound)
        .fold(alpha * 1.5, f64::max)
        .min(1.0);
    let min_share = points.iter().map(|p| p.local_share).fold(1.0, f64::min);
    let lo_share = (min_share - 0.05).max(0.0);
    let x = |drop: f64| pad + (w - 2.0 * pad) * drop / max_drop;
    let y =
        |share: f64| h - pad - (h - 2.0 * pad) * (share - lo_share) / (1.0 - lo_share).max(1e-9);
    let line = |pick: fn(&CurvePoint) -> f64| {
        points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(pick(p).min(max_drop)), y(p.local_share)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="black"/>"#,
        b = h - pad,
        r = w - pad
    );
    let _ = writeln!(
        svg,
        r#"<text x="{cx}" y="{ty}" text-anchor="middle">recall drop (share of positives stage 2 would catch)</text>"#,
        cx = w / 2.0,
        ty = h - 16.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{cy}" transform="rotate(-90 16 {cy})" text-anchor="middle">share answered locally</text>"#,
        cy = h / 2.0
    );
    for i in 0..=4 {
        let drop = max_drop * f64::from(i) / 4.0;
        let share = lo_share + (1.0 - lo_share) * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{drop:.3}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}%</text>"#,
            x(drop),
            h - pad + 16.0,
            pad - 6.0,
            y(share) + 4.0,
            100.0 * share
        );
    }
    let _ = writeln!(
        svg,
        r#"<line x1="{ax:.1}" y1="{pad}" x2="{ax:.1}" y2="{b}" stroke="crimson" stroke-dasharray="4 3"/><text x="{tx:.1}" y="{ty}" fill="crimson">target α = {alpha}</text>"#,
        ax = x(alpha.min(max_drop)),
        b = h - pad,
        tx = x(alpha.min(max_drop)) + 4.0,
        ty = pad + 12.0
    );
    let _ = writeln!(
        svg,
        r#"<polyline fill="none" stroke="steelblue" stroke-width="2" points="{}"/>"#,
        line(|p| p.recall_drop)
    );
    let _ = writeln!(
        svg,
        r#"<polyline fill="none" stroke="darkorange" stroke-width="2" stroke-dasharray="6 3" points="{}"/>"#,
        line(|p| p.bound)
    );
    let _ = writeln!(
        svg,
        r#"<circle cx="{:.1}" cy="{:.1}" r="5" fill="black"/><text x="{:.1}" y="{:.1}">certified: {:.1}% local, bound {:.4}</text>"#,
        x(band.recall_drop_bound.min(max_drop)),
        y(band.local_share),
        x(band.recall_drop_bound.min(max_drop)) + 8.0,
        y(band.local_share) - 8.0,
        100.0 * band.local_share,
        band.recall_drop_bound
    );
    let _ = writeln!(
        svg,
        r#"<text x="{lx}" y="{ly}" fill="steelblue">observed</text><text x="{lx}" y="{ly2}" fill="darkorange">upper bound (1 − δ/2)</text>"#,
        lx = w - pad - 150.0,
        ly = h - pad - 40.0,
        ly2 = h - pad - 24.0
    );
    svg.push_str("</svg>\n");
    svg
}

/// Now as RFC 3339 in UTC, to the second.
fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (the civil-from-days
/// algorithm of Howard Hinnant's date library).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_158_691), "2026-12-01T20:58:11Z");
    }

    fn model() -> LogisticModel {
        LogisticModel::from_json(
            r#"{"name": "m", "features": ["a", "b"], "coefficients": [1.0, -1.0], "intercept": 0.0}"#,
        )
        .unwrap()
    }

    #[test]
    fn csv_columns_are_matched_by_name() {
        let rows = parse_csv(
            b"b,extra,a,label,stage2\n2,x,1,1,0.9\n0,y,3,0,0.1\n",
            &model(),
        )
        .unwrap();
        assert_eq!(rows[0].features, vec![1.0, 2.0]);
        assert_eq!(rows[1].label, Some(false));
        assert_eq!(rows[0].stage2, Some(0.9));
        assert!(parse_csv(b"a,label\n1,1\n", &model())
            .unwrap_err()
            .contains("\"b\""));
        assert!(parse_csv(b"a,b,label\n1,2,7\n", &model())
            .unwrap_err()
            .contains("line 2"));
        assert!(parse_csv(b"a,b\n1,2\n", &model()).is_err());
    }

    #[test]
    fn npy_arrays_are_read_in_c_order() {
        let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }";
        let mut padded = header.to_owned();
        while (10 + padded.len() + 1) % 64 != 0 {
            padded.push(' ');
        }
        padded.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(padded.len() as u16).to_le_bytes());
        bytes.extend_from_slice(padded.as_bytes());
        for v in [1.0f64, 2.0, 1.0, 3.0, 4.0, 0.0] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let rows = parse_npy(&bytes, 2, &["label".to_owned()]).unwrap();
        assert_eq!(rows[1].features, vec![3.0, 4.0]);
        assert_eq!(rows[0].label, Some(true));
        assert!(parse_npy(&bytes, 3, &["label".to_owned()]).is_err());
        assert!(parse_npy(b"not numpy", 2, &[]).is_err());
    }

    #[test]
    fn recorded_lines_are_read() {
        let rows = parse_jsonl(
            b"{\"features\":[1,2],\"stage1\":0.3,\"stage2\":0.8}\n\n{\"features\":[0,0],\"stage1\":0.5,\"stage2\":0.1}\n",
            2,
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].stage2, Some(0.8));
        assert!(parse_jsonl(b"{\"features\":[1],\"stage1\":0.3,\"stage2\":0.8}\n", 2).is_err());
    }
}
