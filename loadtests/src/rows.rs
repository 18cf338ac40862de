//! `--rows FILE`: the user's own feature rows, read from CSV or NumPy `.npy`, and the batches
//! of `--batch` consecutive rows that the requests carry.
//!
//! # How it works
//! The file is read once, at start-up, straight into the typed values of `--datatype`, so a
//! cell that cannot be sent as that type is reported with its line (CSV) or row and column
//! (`.npy`) before any load is sent. A file starting with the `.npy` magic is read as NumPy,
//! anything else as CSV.
//!
//! Request `i` carries the `batch` rows from row `(i × batch) mod len`, wrapping around the
//! end of the file. Those start rows repeat after `len / gcd(len, batch)` requests, so that
//! many distinct bodies cover every request; [`batches`] yields them in order, and the caller
//! encodes each once (see [`crate::run::Config::bodies`]), so that sending one costs a
//! reference-count increment.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use bytes::Bytes;
use serde::Serialize;

/// The start of every `.npy` file.
const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// At most this many distinct bodies are built. Past it, the run cycles over the first ones:
/// memory and start-up time stay bounded whatever the file and `--batch`.
pub const MAX_BODIES: usize = 10_000;

/// An OIP tensor datatype that `--rows` can send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datatype {
    Fp64,
    Fp32,
    Int64,
    Int32,
}

impl Datatype {
    /// The names `--datatype` accepts, as OIP spells them.
    pub const NAMES: [&'static str; 4] = ["FP64", "FP32", "INT64", "INT32"];

    pub fn as_str(self) -> &'static str {
        match self {
            Datatype::Fp64 => "FP64",
            Datatype::Fp32 => "FP32",
            Datatype::Int64 => "INT64",
            Datatype::Int32 => "INT32",
        }
    }
}

impl fmt::Display for Datatype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Datatype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "FP64" => Ok(Datatype::Fp64),
            "FP32" => Ok(Datatype::Fp32),
            "INT64" => Ok(Datatype::Int64),
            "INT32" => Ok(Datatype::Int32),
            _ => Err(format!(
                "{s:?} is not one of {}",
                Datatype::NAMES.join(", ")
            )),
        }
    }
}

/// Row-major tensor values, already of the datatype they are sent as. Serializes as a flat
/// JSON array, which is what OIP's `data` takes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Data {
    Fp64(Vec<f64>),
    Fp32(Vec<f32>),
    Int64(Vec<i64>),
    Int32(Vec<i32>),
}

impl Data {
    fn with_capacity(datatype: Datatype, n: usize) -> Self {
        match datatype {
            Datatype::Fp64 => Data::Fp64(Vec::with_capacity(n)),
            Datatype::Fp32 => Data::Fp32(Vec::with_capacity(n)),
            Datatype::Int64 => Data::Int64(Vec::with_capacity(n)),
            Datatype::Int32 => Data::Int32(Vec::with_capacity(n)),
        }
    }

    pub fn datatype(&self) -> Datatype {
        match self {
            Data::Fp64(_) => Datatype::Fp64,
            Data::Fp32(_) => Datatype::Fp32,
            Data::Int64(_) => Datatype::Int64,
            Data::Int32(_) => Datatype::Int32,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Data::Fp64(v) => v.len(),
            Data::Fp32(v) => v.len(),
            Data::Int64(v) => v.len(),
            Data::Int32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a value read as a float. Integer types take only whole numbers in range, so
    /// that `3.0` (as pandas writes an integer column with gaps) is still accepted. The error
    /// says what is wrong with the value, for the caller to put after it.
    fn push_float(&mut self, v: f64) -> Result<(), String> {
        if !v.is_finite() {
            return Err("is not a finite number".into());
        }
        match self {
            Data::Fp64(out) => out.push(v),
            Data::Fp32(_) if v.abs() > f64::from(f32::MAX) => {
                return Err("is out of range for FP32".into());
            }
            Data::Fp32(out) => out.push(v as f32),
            Data::Int64(_) | Data::Int32(_) => {
                if v.fract() != 0.0 {
                    return Err(format!(
                        "is not an integer (--datatype {})",
                        self.datatype()
                    ));
                }
                // ±2^63 are exact in f64; an i64 holds [-2^63, 2^63).
                let limit = 2f64.powi(63);
                if !(-limit..limit).contains(&v) {
                    return Err(format!("is out of range for {}", self.datatype()));
                }
                self.push_int(v as i64)?;
            }
        }
        Ok(())
    }

    /// Appends a value read as an integer. Float types take any (`as` rounds past 2^53).
    fn push_int(&mut self, v: i64) -> Result<(), String> {
        match self {
            Data::Fp64(out) => out.push(v as f64),
            Data::Fp32(out) => out.push(v as f32),
            Data::Int64(out) => out.push(v),
            Data::Int32(out) => {
                out.push(i32::try_from(v).map_err(|_| "is out of range for INT32".to_owned())?)
            }
        }
        Ok(())
    }

    /// `n` values from `start`, wrapping around the end.
    fn wrapped(&self, start: usize, n: usize) -> Data {
        fn take<T: Copy>(v: &[T], start: usize, n: usize) -> Vec<T> {
            v.iter().copied().cycle().skip(start).take(n).collect()
        }
        match self {
            Data::Fp64(v) => Data::Fp64(take(v, start, n)),
            Data::Fp32(v) => Data::Fp32(take(v, start, n)),
            Data::Int64(v) => Data::Int64(take(v, start, n)),
            Data::Int32(v) => Data::Int32(take(v, start, n)),
        }
    }
}

/// Rows of equal width: a `[len, width]` tensor. Never empty.
#[derive(Clone, Debug, PartialEq)]
pub struct Rows {
    width: usize,
    data: Data,
}

/// A `--rows` file that cannot be used: the file and what is wrong, on one line.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct RowsError {
    pub file: String,
    pub message: String,
}

impl Rows {
    /// Reads a `.npy` (by its magic bytes) or CSV file as `datatype`.
    pub fn read(path: &Path, datatype: Datatype) -> Result<Rows, RowsError> {
        let fail = |message: String| RowsError {
            file: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        if bytes.starts_with(NPY_MAGIC) {
            return Rows::parse_npy(&bytes, datatype).map_err(fail);
        }
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
        {
            return Err(fail("not a .npy file (no \\x93NUMPY magic)".into()));
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| fail(format!("not a .npy file and not UTF-8 text: {e}")))?;
        Rows::parse_csv(text, datatype).map_err(fail)
    }

    /// Comma-separated numbers, one row a line. A first line with no numbers at all is a
    /// header and skipped; blank lines and lines starting with `#` (NumPy's `savetxt`
    /// header) are ignored. Errors name the 1-based line.
    pub fn parse_csv(text: &str, datatype: Datatype) -> Result<Rows, String> {
        let mut data = Data::with_capacity(datatype, 0);
        let mut width = None;
        let mut header = None;
        let mut seen_line = false;
        // Spreadsheets often start a UTF-8 CSV with a byte-order mark.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            if !seen_line {
                seen_line = true;
                if !cells.iter().any(|c| c.parse::<f64>().is_ok()) {
                    header = Some((number, cells.len()));
                    continue;
                }
            }
            match width {
                None => {
                    if let Some((header_line, names)) = header.filter(|&(_, n)| n != cells.len()) {
                        return Err(format!(
                            "line {number}: {}, but the header on line {header_line} has {names} names",
                            values(cells.len())
                        ));
                    }
                    width = Some((number, cells.len()));
                }
                Some((first, n)) if n != cells.len() => {
                    return Err(format!(
                        "line {number}: {}, but line {first} has {n}",
                        values(cells.len())
                    ));
                }
                Some(_) => {}
            }
            for (column, cell) in cells.iter().enumerate() {
                let pushed = if let Ok(i) = cell.parse::<i64>() {
                    data.push_int(i)
                } else if let Ok(f) = cell.parse::<f64>() {
                    data.push_float(f)
                } else {
                    Err("is not a number".to_owned())
                };
                pushed
                    .map_err(|e| format!("line {number}, column {}: {cell:?} {e}", column + 1))?;
            }
        }
        match width {
            Some((_, width)) => Ok(Rows { width, data }),
            None if header.is_some() => Err("a header line but no rows".into()),
            None => Err("no rows (the file is empty)".into()),
        }
    }

    /// A NumPy `.npy` file, format 1.0, 2.0 or 3.0: a 2-D C-order array of `<f8`, `<f4`,
    /// `<i8` or `<i4`, converted to `datatype`. Errors name the 0-based row and column, as
    /// NumPy indexes them.
    pub fn parse_npy(bytes: &[u8], datatype: Datatype) -> Result<Rows, String> {
        let rest = bytes
            .strip_prefix(NPY_MAGIC)
            .ok_or("not a .npy file (no \\x93NUMPY magic)")?;
        let (&major, rest) = rest.split_first().ok_or("truncated .npy preamble")?;
        let (_minor, rest) = rest.split_first().ok_or("truncated .npy preamble")?;
        let (header_len, rest) = match major {
            1 => {
                let (len, rest) = rest.split_at_checked(2).ok_or("truncated .npy preamble")?;
                (usize::from(u16::from_le_bytes([len[0], len[1]])), rest)
            }
            2 | 3 => {
                let (len, rest) = rest.split_at_checked(4).ok_or("truncated .npy preamble")?;
                let len = u32::from_le_bytes(len.try_into().expect("split at 4"));
                (len as usize, rest)
            }
            v => {
                return Err(format!(
                    ".npy format version {v} is not supported (1, 2 or 3)"
                ))
            }
        };
        let (header, payload) = rest
            .split_at_checked(header_len)
            .ok_or(".npy header is cut short")?;
        let header = std::str::from_utf8(header).map_err(|_| ".npy header is not text")?;
        let header = NpyHeader::parse(header)?;
        let [rows, width] = header.shape;
        if rows == 0 || width == 0 {
            return Err(format!("the array is empty (shape ({rows}, {width}))"));
        }
        let item = header.dtype.size();
        let needed = rows
            .checked_mul(width)
            .and_then(|n| n.checked_mul(item))
            .ok_or("shape is too large")?;
        if payload.len() != needed {
            return Err(format!(
                "data is {} bytes, but shape ({rows}, {width}) of '{}' needs {needed}",
                payload.len(),
                header.dtype.descr()
            ));
        }
        // `{:?}` keeps 1e300 short, where `{}` would print all 301 digits.
        let float = |v: f64, data: &mut Data| data.push_float(v).map_err(|e| format!("{v:?} {e}"));
        let int = |v: i64, data: &mut Data| data.push_int(v).map_err(|e| format!("{v} {e}"));
        let mut data = Data::with_capacity(datatype, rows * width);
        for (k, chunk) in payload.chunks_exact(item).enumerate() {
            let pushed = match header.dtype {
                NpyDtype::F8 => float(
                    f64::from_le_bytes(chunk.try_into().expect("8 bytes")),
                    &mut data,
                ),
                NpyDtype::F4 => float(
                    f32::from_le_bytes(chunk.try_into().expect("4 bytes")).into(),
                    &mut data,
                ),
                NpyDtype::I8 => int(
                    i64::from_le_bytes(chunk.try_into().expect("8 bytes")),
                    &mut data,
                ),
                NpyDtype::I4 => int(
                    i32::from_le_bytes(chunk.try_into().expect("4 bytes")).into(),
                    &mut data,
                ),
            };
            pushed.map_err(|e| format!("row {}, column {}: {e}", k / width, k % width))?;
        }
        Ok(Rows { width, data })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.data.len() / self.width
    }

    /// Never true: a file without rows is an error. Here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Values per row: the tensor's second dimension.
    pub fn width(&self) -> usize {
        self.width
    }

    pub fn datatype(&self) -> Datatype {
        self.data.datatype()
    }

    /// The row-major values.
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// `n` consecutive rows from row `start`, wrapping around to row 0 after the last.
    pub fn batch(&self, start: usize, n: usize) -> Rows {
        Rows {
            width: self.width,
            data: self
                .data
                .wrapped((start % self.len()) * self.width, n * self.width),
        }
    }
}

/// "1 value", "2 values".
fn values(n: usize) -> String {
    format!("{n} value{}", if n == 1 { "" } else { "s" })
}

/// How many distinct batches a run over `len` rows in batches of `batch` goes through before
/// it repeats: the start row `(i × batch) mod len` cycles with period `len / gcd(len, batch)`.
pub fn cycle_len(len: usize, batch: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    len / gcd(len, batch)
}

/// The batches of one cycle, in request order: batch `k` starts at row `(k × batch) mod
/// len`. Request `i` carries batch `i mod count`, where `count` is however many the caller
/// takes (the whole cycle, [`cycle_len`], or fewer to bound memory).
pub fn batches(rows: &Rows, batch: usize) -> impl Iterator<Item = Rows> + '_ {
    let len = rows.len();
    // k < len, so this cannot overflow where `k * batch` could.
    (0..cycle_len(len, batch)).map(move |k| rows.batch(k * (batch % len) % len, batch))
}

/// At most this many bytes of bodies are built (with at least one body): with large batches
/// [`MAX_BODIES`] alone could still mean gigabytes.
pub const MAX_BODIES_BYTES: usize = 256 << 20;

/// The encoded bodies of one cycle of batches, or of its start when the cycle is too long.
#[derive(Debug)]
pub struct Bodies {
    /// Body `k` carries batch `k` of [`batches`]; request `i` sends body `i mod len`.
    pub bodies: Vec<Bytes>,
    /// Batches in a whole cycle, [`cycle_len`]. More than `bodies.len()` when the bodies were
    /// cut at [`MAX_BODIES`] or [`MAX_BODIES_BYTES`].
    pub cycle: usize,
}

impl Bodies {
    /// Encodes the batches of `rows` with `encode`, in order, until the cycle is complete or
    /// a bound is reached.
    pub fn build(rows: &Rows, batch: usize, encode: impl FnMut(&Rows) -> Bytes) -> Bodies {
        Bodies::build_within(rows, batch, (MAX_BODIES, MAX_BODIES_BYTES), encode)
    }

    /// [`Bodies::build`] with the bounds as arguments, so tests need not build 256 MiB.
    fn build_within(
        rows: &Rows,
        batch: usize,
        (max_bodies, max_bytes): (usize, usize),
        mut encode: impl FnMut(&Rows) -> Bytes,
    ) -> Bodies {
        let cycle = cycle_len(rows.len(), batch);
        let mut bodies = Vec::with_capacity(cycle.min(max_bodies));
        let mut bytes = 0;
        for b in batches(rows, batch).take(max_bodies) {
            if !bodies.is_empty() && bytes >= max_bytes {
                break;
            }
            let body = encode(&b);
            bytes += body.len();
            bodies.push(body);
        }
        Bodies { bodies, cycle }
    }

    /// Whether some batches of the cycle were left out.
    pub fn is_cut(&self) -> bool {
        self.bodies.len() < self.cycle
    }
}

/// The `.npy` header dict, e.g. `{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }`.
struct NpyHeader {
    dtype: NpyDtype,
    shape: [usize; 2],
}

#[derive(Clone, Copy)]
enum NpyDtype {
    F8,
    F4,
    I8,
    I4,
}

impl NpyDtype {
    fn size(self) -> usize {
        match self {
            NpyDtype::F8 | NpyDtype::I8 => 8,
            NpyDtype::F4 | NpyDtype::I4 => 4,
        }
    }

    fn descr(self) -> &'static str {
        match self {
            NpyDtype::F8 => "<f8",
            NpyDtype::F4 => "<f4",
            NpyDtype::I8 => "<i8",
            NpyDtype::I4 => "<i4",
        }
    }
}

/// A value of the Python literal subset `.npy` headers use.
#[derive(Debug, PartialEq)]
enum PyValue {
    Str(String),
    Bool(bool),
    Int(u64),
    Tuple(Vec<PyValue>),
}

impl NpyHeader {
    fn parse(text: &str) -> Result<NpyHeader, String> {
        let bad = |what: &str| format!(".npy header {what}: {:?}", text.trim_end());
        let entries = PyParser { rest: text.trim() }
            .dict()
            .ok_or_else(|| bad("is not a Python dict literal"))?;
        let get = |key: &str| {
            entries
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .ok_or_else(|| bad(&format!("has no '{key}'")))
        };
        let dtype = match get("descr")? {
            PyValue::Str(s) => match s.as_str() {
                "<f8" => NpyDtype::F8,
                "<f4" => NpyDtype::F4,
                "<i8" => NpyDtype::I8,
                "<i4" => NpyDtype::I4,
                other => {
                    return Err(format!(
                        "dtype '{other}' is not supported (use '<f8', '<f4', '<i8' or '<i4')"
                    ))
                }
            },
            _ => {
                return Err(
                    "a structured dtype is not supported (use '<f8', '<f4', '<i8' or '<i4')".into(),
                )
            }
        };
        match get("fortran_order")? {
            PyValue::Bool(false) => {}
            PyValue::Bool(true) => {
                return Err("a Fortran-order array is not supported (save it in C order)".into())
            }
            _ => return Err(bad("has a 'fortran_order' that is not True or False")),
        }
        let shape = match get("shape")? {
            PyValue::Tuple(dims) => dims
                .iter()
                .map(|d| match d {
                    PyValue::Int(n) => usize::try_from(*n).ok(),
                    _ => None,
                })
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| bad("has a 'shape' that is not a tuple of integers"))?,
            _ => return Err(bad("has a 'shape' that is not a tuple")),
        };
        let shape: [usize; 2] = shape.as_slice().try_into().map_err(|_| {
            let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
            format!(
                "shape ({}) is not 2-D (rows, features)",
                if dims.len() == 1 {
                    format!("{},", dims[0])
                } else {
                    dims.join(", ")
                }
            )
        })?;
        Ok(NpyHeader { dtype, shape })
    }
}

/// A recursive-descent parser for the header dict: strings, `True`/`False`, non-negative
/// integers and tuples, which is all `numpy.lib.format` writes.
struct PyParser<'a> {
    rest: &'a str,
}

impl PyParser<'_> {
    fn skip_space(&mut self) {
        self.rest = self.rest.trim_start();
    }

    fn eat(&mut self, token: char) -> bool {
        self.skip_space();
        match self.rest.strip_prefix(token) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// `{key: value, ...}` with an optional trailing comma.
    fn dict(&mut self) -> Option<Vec<(String, PyValue)>> {
        if !self.eat('{') {
            return None;
        }
        let mut entries = Vec::new();
        loop {
            if self.eat('}') {
                break;
            }
            let PyValue::Str(key) = self.value()? else {
                return None;
            };
            if !self.eat(':') {
                return None;
            }
            entries.push((key, self.value()?));
            if !self.eat(',') {
                if !self.eat('}') {
                    return None;
                }
                break;
            }
        }
        self.skip_space();
        self.rest.is_empty().then_some(entries)
    }

    fn value(&mut self) -> Option<PyValue> {
        self.skip_space();
        let first = self.rest.chars().next()?;
        match first {
            '\'' | '"' => {
                let body = &self.rest[1..];
                let end = body.find(first)?;
                self.rest = &body[end + 1..];
                Some(PyValue::Str(body[..end].to_owned()))
            }
            '(' => {
                self.rest = &self.rest[1..];
                let mut items = Vec::new();
                loop {
                    if self.eat(')') {
                        break;
                    }
                    items.push(self.value()?);
                    if !self.eat(',') {
                        if !self.eat(')') {
                            return None;
                        }
                        break;
                    }
                }
                Some(PyValue::Tuple(items))
            }
            '0'..='9' => {
                let end = self
                    .rest
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(self.rest.len());
                let n = self.rest[..end].parse().ok()?;
                self.rest = &self.rest[end..];
                Some(PyValue::Int(n))
            }
            _ => {
                for (word, v) in [("True", true), ("False", false)] {
                    if let Some(rest) = self.rest.strip_prefix(word) {
                        self.rest = rest;
                        return Some(PyValue::Bool(v));
                    }
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `.npy` file as `numpy.save` writes it: magic, version, padded header, values.
    fn npy(version: u8, descr: &str, shape: &str, payload: &[u8]) -> Vec<u8> {
        let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        npy_with_header(version, &dict, payload)
    }

    fn npy_with_header(version: u8, dict: &str, payload: &[u8]) -> Vec<u8> {
        let mut header = dict.to_owned();
        let prefix = if version == 1 { 10 } else { 12 };
        // NumPy pads with spaces to a multiple of 64 and ends with a newline.
        while (prefix + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = NPY_MAGIC.to_vec();
        out.extend([version, 0]);
        if version == 1 {
            out.extend(u16::try_from(header.len()).unwrap().to_le_bytes());
        } else {
            out.extend(u32::try_from(header.len()).unwrap().to_le_bytes());
        }
        out.extend(header.as_bytes());
        out.extend(payload);
        out
    }

    fn f8(values: &[f64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn i8(values: &[i64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn csv_with_and_without_a_header() {
        let plain = Rows::parse_csv("\u{feff}1,2.5,3\n4, 5 ,6\r\n\n", Datatype::Fp64).unwrap();
        assert_eq!((plain.len(), plain.width()), (2, 3));
        assert_eq!(
            plain.data(),
            &Data::Fp64(vec![1.0, 2.5, 3.0, 4.0, 5.0, 6.0])
        );
        let with_header =
            Rows::parse_csv("amount,age,score\n1,2.5,3\n4,5,6\n", Datatype::Fp64).unwrap();
        assert_eq!(with_header, plain);
        // NumPy's savetxt header is a comment.
        let commented = Rows::parse_csv("# a,b,c\n1,2.5,3\n4,5,6", Datatype::Fp64).unwrap();
        assert_eq!(commented, plain);
        let ints = Rows::parse_csv("a,b\n1,-2\n3.0,9007199254740993\n", Datatype::Int64).unwrap();
        assert_eq!(
            ints.data(),
            &Data::Int64(vec![1, -2, 3, 9_007_199_254_740_993])
        );
        let fp32 = Rows::parse_csv("0.1,2", Datatype::Fp32).unwrap();
        assert_eq!(fp32.data(), &Data::Fp32(vec![0.1, 2.0]));
        let int32 = Rows::parse_csv("7,-8", Datatype::Int32).unwrap();
        assert_eq!(int32.data(), &Data::Int32(vec![7, -8]));
    }

    #[test]
    fn csv_errors_name_the_line() {
        let err = |text: &str, datatype| Rows::parse_csv(text, datatype).unwrap_err();
        assert_eq!(err("", Datatype::Fp64), "no rows (the file is empty)");
        assert_eq!(err("\n \n", Datatype::Fp64), "no rows (the file is empty)");
        assert_eq!(err("a,b\n", Datatype::Fp64), "a header line but no rows");
        assert_eq!(
            err("1,2\n3\n", Datatype::Fp64),
            "line 2: 1 value, but line 1 has 2"
        );
        assert_eq!(
            err("a,b,c\n1,2\n", Datatype::Fp64),
            "line 2: 2 values, but the header on line 1 has 3 names"
        );
        assert_eq!(
            err("1,2\n3,x\n", Datatype::Fp64),
            "line 2, column 2: \"x\" is not a number"
        );
        assert_eq!(
            err("1,,2", Datatype::Fp64),
            "line 1, column 2: \"\" is not a number"
        );
        assert_eq!(
            err("1,2\n3,1.5\n", Datatype::Int64),
            "line 2, column 2: \"1.5\" is not an integer (--datatype INT64)"
        );
        assert_eq!(
            err("1,nan", Datatype::Fp64),
            "line 1, column 2: \"nan\" is not a finite number"
        );
        assert_eq!(
            err("3000000000", Datatype::Int32),
            "line 1, column 1: \"3000000000\" is out of range for INT32"
        );
        assert_eq!(
            err("1e19", Datatype::Int64),
            "line 1, column 1: \"1e19\" is out of range for INT64"
        );
        assert_eq!(
            Rows::parse_csv("1e3", Datatype::Int64).unwrap().data(),
            &Data::Int64(vec![1000])
        );
        assert_eq!(
            err("1e300", Datatype::Fp32),
            "line 1, column 1: \"1e300\" is out of range for FP32"
        );
    }

    #[test]
    fn npy_f8_and_i8() {
        for version in [1, 2] {
            let bytes = npy(
                version,
                "<f8",
                "(2, 3)",
                &f8(&[1.0, 2.5, -3.0, 4.0, 5.0, 6.0]),
            );
            let rows = Rows::parse_npy(&bytes, Datatype::Fp64).unwrap();
            assert_eq!((rows.len(), rows.width()), (2, 3));
            assert_eq!(
                rows.data(),
                &Data::Fp64(vec![1.0, 2.5, -3.0, 4.0, 5.0, 6.0])
            );
            let rows = Rows::parse_npy(&bytes, Datatype::Fp32).unwrap();
            assert_eq!(
                rows.data(),
                &Data::Fp32(vec![1.0, 2.5, -3.0, 4.0, 5.0, 6.0])
            );
        }
        let bytes = npy(1, "<i8", "(3, 1)", &i8(&[7, -8, 1 << 40]));
        let rows = Rows::parse_npy(&bytes, Datatype::Int64).unwrap();
        assert_eq!((rows.len(), rows.width()), (3, 1));
        assert_eq!(rows.data(), &Data::Int64(vec![7, -8, 1 << 40]));
        let rows = Rows::parse_npy(&bytes, Datatype::Fp64).unwrap();
        assert_eq!(
            rows.data(),
            &Data::Fp64(vec![7.0, -8.0, (1u64 << 40) as f64])
        );
        // 2^40 does not fit INT32.
        assert_eq!(
            Rows::parse_npy(&bytes, Datatype::Int32).unwrap_err(),
            "row 2, column 0: 1099511627776 is out of range for INT32"
        );
        let f4: Vec<u8> = [0.5f32, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let rows = Rows::parse_npy(&npy(1, "<f4", "(1, 2)", &f4), Datatype::Fp32).unwrap();
        assert_eq!(rows.data(), &Data::Fp32(vec![0.5, 1.0]));
        let i4: Vec<u8> = [3i32, -4].iter().flat_map(|v| v.to_le_bytes()).collect();
        let rows = Rows::parse_npy(&npy(1, "<i4", "(2, 1)", &i4), Datatype::Int32).unwrap();
        assert_eq!(rows.data(), &Data::Int32(vec![3, -4]));
    }

    #[test]
    fn npy_errors() {
        let err = |bytes: &[u8]| Rows::parse_npy(bytes, Datatype::Fp64).unwrap_err();
        assert_eq!(
            err(&npy(1, "<u2", "(1, 1)", &[0, 0])),
            "dtype '<u2' is not supported (use '<f8', '<f4', '<i8' or '<i4')"
        );
        assert_eq!(
            err(&npy(1, ">f8", "(1, 1)", &f8(&[1.0]))),
            "dtype '>f8' is not supported (use '<f8', '<f4', '<i8' or '<i4')"
        );
        assert_eq!(
            err(&npy(1, "<f8", "(3,)", &f8(&[1.0, 2.0, 3.0]))),
            "shape (3,) is not 2-D (rows, features)"
        );
        assert_eq!(
            err(&npy(1, "<f8", "(0, 4)", &[])),
            "the array is empty (shape (0, 4))"
        );
        assert_eq!(
            err(&npy(1, "<f8", "(2, 0)", &[])),
            "the array is empty (shape (2, 0))"
        );
        assert_eq!(
            err(&npy(1, "<f8", "(2, 2)", &f8(&[1.0, 2.0, 3.0]))),
            "data is 24 bytes, but shape (2, 2) of '<f8' needs 32"
        );
        assert_eq!(
            err(&npy(1, "<f8", "(1, 2)", &f8(&[1.0, f64::INFINITY]))),
            "row 0, column 1: inf is not a finite number"
        );
        assert_eq!(
            Rows::parse_npy(&npy(1, "<f8", "(1, 2)", &f8(&[1.0, 0.5])), Datatype::Int64)
                .unwrap_err(),
            "row 0, column 1: 0.5 is not an integer (--datatype INT64)"
        );
        let fortran = "{'descr': '<f8', 'fortran_order': True, 'shape': (1, 1), }";
        assert_eq!(
            err(&npy_with_header(1, fortran, &f8(&[1.0]))),
            "a Fortran-order array is not supported (save it in C order)"
        );
        assert!(err(b"\x93NUMPY\x01\x00\x04\x00{'a'").contains("not a Python dict"));
        assert_eq!(
            err(b"\x93NUMPY\x01\x00\x05\x00{'a'"),
            ".npy header is cut short"
        );
        assert_eq!(
            err(b"\x93NUMPY\x09\x00"),
            ".npy format version 9 is not supported (1, 2 or 3)"
        );
    }

    #[test]
    fn header_parser_reads_what_numpy_writes() {
        let h =
            NpyHeader::parse("{'descr': '<i8', 'fortran_order': False, 'shape': (10, 4), }   \n")
                .unwrap();
        assert_eq!(h.shape, [10, 4]);
        assert!(matches!(h.dtype, NpyDtype::I8));
        // Key order and the trailing comma are free.
        let h = NpyHeader::parse("{\"shape\":(1,2),\"fortran_order\":False,\"descr\":\"<f4\"}")
            .unwrap();
        assert_eq!(h.shape, [1, 2]);
    }

    #[test]
    fn batches_wrap_around_and_cycle() {
        let rows = Rows::parse_csv("0\n1\n2\n3\n4\n", Datatype::Int64).unwrap();
        let got: Vec<Data> = batches(&rows, 2).map(|b| b.data).collect();
        // Starts 0, 2, 4, 1, 3: request i starts at (2i) mod 5, then repeats.
        assert_eq!(
            got,
            [
                Data::Int64(vec![0, 1]),
                Data::Int64(vec![2, 3]),
                Data::Int64(vec![4, 0]),
                Data::Int64(vec![1, 2]),
                Data::Int64(vec![3, 4]),
            ]
        );
        assert_eq!(cycle_len(5, 2), 5);
        assert_eq!(cycle_len(6, 2), 3);
        assert_eq!(cycle_len(6, 6), 1);
        assert_eq!(cycle_len(3, 1), 3);
        // A batch longer than the file wraps more than once.
        let two = Rows::parse_csv("1,10\n2,20\n", Datatype::Int64).unwrap();
        let got: Vec<Rows> = batches(&two, 3).collect();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].len(), got[0].width()), (3, 2));
        assert_eq!(got[0].data, Data::Int64(vec![1, 10, 2, 20, 1, 10]));
        assert_eq!(got[1].data, Data::Int64(vec![2, 20, 1, 10, 2, 20]));
    }

    #[test]
    fn bodies_cover_one_cycle_within_bounds() {
        let rows = Rows::parse_csv("0\n1\n2\n3\n4\n5\n", Datatype::Int64).unwrap();
        let first = |b: &Rows| match b.data() {
            Data::Int64(v) => Bytes::from(v[0].to_string()),
            _ => unreachable!(),
        };
        let b = Bodies::build(&rows, 4, first);
        // Starts 0, 4, 2, then 0 again.
        assert_eq!(b.bodies, ["0", "4", "2"]);
        assert_eq!(b.cycle, 3);
        assert!(!b.is_cut());
        // 10,007 is prime, so every start row comes round: the cycle is longer than the cap.
        let many: String = (0..10_007).map(|i| format!("{i}\n")).collect();
        let rows = Rows::parse_csv(&many, Datatype::Int64).unwrap();
        let b = Bodies::build(&rows, 3, first);
        assert_eq!((b.bodies.len(), b.cycle), (MAX_BODIES, 10_007));
        assert!(b.is_cut());
        assert_eq!(b.bodies[1], "3");
        // Bodies past the byte bound are not built, but there is always one.
        let b = Bodies::build_within(&rows, 3, (MAX_BODIES, 1), first);
        assert_eq!(b.bodies, ["0"]);
        let b = Bodies::build_within(&rows, 3, (MAX_BODIES, 3), first);
        assert_eq!(b.bodies, ["0", "3", "6"], "stops once 3 bytes are built");
    }

    #[test]
    fn datatype_names() {
        for name in Datatype::NAMES {
            assert_eq!(name.parse::<Datatype>().unwrap().as_str(), name);
        }
        assert_eq!("fp32".parse::<Datatype>().unwrap(), Datatype::Fp32);
        assert!("BYTES".parse::<Datatype>().is_err());
    }
}
