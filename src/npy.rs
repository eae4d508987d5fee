//! NumPy `.npy` files: the exchange format with the Python reference tools (scikit-learn,
//! the `hdbscan` package) for embeddings, reduced matrices, labels and distances.
//!
//! Only what those exchanges need: 2-D float32/float64 matrices (read as f32) and 1-D int64 /
//! float64 vectors, format versions 1-3, either byte order, C or Fortran order. Files written here
//! are version 1, little endian, C order, readable by `numpy.load`.
//!
//! The header is checked against the file length before anything is allocated, so a corrupt or
//! hostile file gives an error instead of a huge allocation or a panic.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::matrix::Matrix;

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Headers are a short Python dict; anything longer than this is not a file we wrote or want.
const MAX_HEADER_LEN: usize = 1 << 20;
/// Bytes converted per read when narrowing f64 to f32, so no full f64 copy is ever held.
const CHUNK_BYTES: usize = 1 << 20;

/// Element types we read. Byte order is kept separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    F32,
    F64,
    I32,
    I64,
}

impl Kind {
    fn size(self) -> usize {
        match self {
            Kind::F32 | Kind::I32 => 4,
            Kind::F64 | Kind::I64 => 8,
        }
    }
}

/// A parsed header: what the data section holds.
#[derive(Debug)]
struct Header {
    descr: String,
    kind: Kind,
    big_endian: bool,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Reads an N x D float32 or float64 array as an f32 matrix. float64 values are narrowed
/// (values beyond the f32 range become infinite, which validation rejects).
pub fn read_matrix(path: impl AsRef<Path>) -> Result<Matrix> {
    let path = path.as_ref();
    let (header, mut reader) = open(path)?;
    let [rows, cols] = header.shape[..] else {
        bail!(
            "{}: expected a 2-D array (N x D), found shape {:?}",
            path.display(),
            header.shape
        );
    };
    if !matches!(header.kind, Kind::F32 | Kind::F64) {
        bail!(
            "{}: expected float32 or float64 values, found dtype '{}' (convert with arr.astype('float32'))",
            path.display(),
            header.descr
        );
    }
    let n = rows * cols; // checked against the file length in `open`
    let mut data = Vec::with_capacity(n);
    read_floats(&mut reader, &header, n, &mut data)
        .with_context(|| format!("{}: reading {rows} x {cols} values", path.display()))?;
    if header.fortran_order && rows > 1 && cols > 1 {
        data = transpose(&data, cols, rows);
    }
    Matrix::new(rows, cols, data)
}

/// Reads a 1-D int64 (or int32) array, e.g. cluster labels.
pub fn read_i64(path: impl AsRef<Path>) -> Result<Vec<i64>> {
    let path = path.as_ref();
    let (header, mut reader) = open(path)?;
    let n = one_dim(path, &header)?;
    if !matches!(header.kind, Kind::I64 | Kind::I32) {
        bail!(
            "{}: expected int64 values, found dtype '{}' (convert with arr.astype('int64'))",
            path.display(),
            header.descr
        );
    }
    let mut out = Vec::with_capacity(n);
    let mut buf = [0u8; 8];
    let size = header.kind.size();
    for _ in 0..n {
        reader
            .read_exact(&mut buf[..size])
            .with_context(|| format!("{}: data section is truncated", path.display()))?;
        let v = match (header.kind, header.big_endian) {
            (Kind::I64, false) => i64::from_le_bytes(buf),
            (Kind::I64, true) => i64::from_be_bytes(buf),
            (_, false) => i64::from(i32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]])),
            (_, true) => i64::from(i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]])),
        };
        out.push(v);
    }
    Ok(out)
}

/// Reads a 1-D float64 (or float32) array, e.g. membership probabilities.
pub fn read_f64(path: impl AsRef<Path>) -> Result<Vec<f64>> {
    let path = path.as_ref();
    let (header, mut reader) = open(path)?;
    let n = one_dim(path, &header)?;
    let mut out = Vec::with_capacity(n);
    let mut buf = [0u8; 8];
    for _ in 0..n {
        let size = header.kind.size();
        reader
            .read_exact(&mut buf[..size])
            .with_context(|| format!("{}: data section is truncated", path.display()))?;
        let v = match (header.kind, header.big_endian) {
            (Kind::F64, false) => f64::from_le_bytes(buf),
            (Kind::F64, true) => f64::from_be_bytes(buf),
            (Kind::F32, false) => f64::from(f32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]])),
            (Kind::F32, true) => f64::from(f32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]])),
            _ => bail!(
                "{}: expected float64 values, found dtype '{}'",
                path.display(),
                header.descr
            ),
        };
        out.push(v);
    }
    Ok(out)
}

/// Writes an N x D float32 array.
pub fn write_matrix(path: impl AsRef<Path>, m: &Matrix) -> Result<()> {
    write_raw(path.as_ref(), "<f4", &[m.rows(), m.cols()], |w| {
        for chunk in m.as_slice().chunks(CHUNK_BYTES / 4) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.write_all(&bytes)?;
        }
        Ok(())
    })
}

/// Writes a 1-D int64 array.
pub fn write_i64(path: impl AsRef<Path>, v: &[i64]) -> Result<()> {
    write_raw(path.as_ref(), "<i8", &[v.len()], |w| {
        v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes()))
    })
}

/// Writes a 1-D float64 array.
pub fn write_f64(path: impl AsRef<Path>, v: &[f64]) -> Result<()> {
    write_raw(path.as_ref(), "<f8", &[v.len()], |w| {
        v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes()))
    })
}

fn write_raw(
    path: &Path,
    descr: &str,
    shape: &[usize],
    body: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::new(file);
    let header = encode_header(descr, shape);
    w.write_all(&header)
        .and_then(|()| body(&mut w))
        .and_then(|()| w.flush())
        .with_context(|| format!("writing {}", path.display()))
}

/// Version 1 header, padded with spaces so the data starts at a multiple of 64 bytes (what
/// numpy itself does, so memory-mapped readers get aligned data).
fn encode_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_text = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut out = Vec::with_capacity(unpadded + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    let len = u16::try_from(dict.len()).expect("a header for at most a few dimensions fits in u16");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Opens `path`, parses its header, and checks that the data section has exactly the size the
/// header announces.
fn open(path: &Path) -> Result<(Header, BufReader<File>)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let file_len = file
        .metadata()
        .with_context(|| format!("reading the size of {}", path.display()))?
        .len();
    let mut reader = BufReader::with_capacity(CHUNK_BYTES, file);
    let (header, header_bytes) = read_header(&mut reader)
        .with_context(|| format!("{}: not a valid .npy file", path.display()))?;
    let count = header
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_mul(header.kind.size()));
    let data_len = file_len.saturating_sub(header_bytes as u64);
    match count {
        Some(expected) if expected as u64 == data_len => Ok((header, reader)),
        Some(expected) => bail!(
            "{}: header announces shape {:?} of '{}' ({expected} bytes) but the file holds {data_len} bytes of data; the file is truncated or corrupt",
            path.display(),
            header.shape,
            header.descr
        ),
        None => bail!("{}: shape {:?} is too large", path.display(), header.shape),
    }
}

fn one_dim(path: &Path, header: &Header) -> Result<usize> {
    match header.shape[..] {
        [n] => Ok(n),
        _ => bail!(
            "{}: expected a 1-D array, found shape {:?}",
            path.display(),
            header.shape
        ),
    }
}

/// Reads the magic, version, header length and header dict; returns the header and the number
/// of bytes consumed.
fn read_header(r: &mut impl Read) -> Result<(Header, usize)> {
    let mut preamble = [0u8; 8];
    r.read_exact(&mut preamble)
        .context("file is shorter than the .npy preamble")?;
    if &preamble[..6] != MAGIC {
        bail!("missing the \\x93NUMPY magic bytes");
    }
    let (len, consumed) = match preamble[6] {
        1 => {
            let mut lb = [0u8; 2];
            r.read_exact(&mut lb).context("truncated header length")?;
            (usize::from(u16::from_le_bytes(lb)), 10)
        }
        2 | 3 => {
            let mut lb = [0u8; 4];
            r.read_exact(&mut lb).context("truncated header length")?;
            (
                usize::try_from(u32::from_le_bytes(lb)).unwrap_or(usize::MAX),
                12,
            )
        }
        v => bail!("unsupported .npy format version {v} (1, 2 and 3 are supported)"),
    };
    if len > MAX_HEADER_LEN {
        bail!("header length {len} is implausibly large");
    }
    let mut text = vec![0u8; len];
    r.read_exact(&mut text).context("truncated header")?;
    let text = std::str::from_utf8(&text).context("header is not UTF-8 text")?;
    Ok((parse_header(text)?, consumed + len))
}

/// Parses the header dict, e.g. `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`.
/// A tiny parser for exactly this literal grammar (quoted keys, a string, a bool, a tuple of
/// ints), so no Python-literal crate is needed.
fn parse_header(text: &str) -> Result<Header> {
    let descr = dict_value(text, "descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|s| s.split('\'').next())
        .or_else(|| descr.strip_prefix('"').and_then(|s| s.split('"').next()))
        .context("'descr' is not a string (structured dtypes are not supported)")?
        .to_string();
    let fortran = dict_value(text, "fortran_order")?;
    let fortran_order = if fortran.starts_with("True") {
        true
    } else if fortran.starts_with("False") {
        false
    } else {
        bail!("'fortran_order' is neither True nor False");
    };
    let shape_text = dict_value(text, "shape")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .context("'shape' is not a tuple")?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<usize>()
                .with_context(|| format!("shape entry '{s}' is not a non-negative integer"))
        })
        .collect::<Result<Vec<_>>>()?;

    // By character, not byte: a damaged header may start the dtype with any character.
    let first = descr.chars().next().map_or(0, char::len_utf8);
    let (order, code) = descr.split_at(first);
    let (big_endian, code) = match order {
        "<" | "=" => (cfg!(target_endian = "big") && order == "=", code),
        ">" => (true, code),
        "|" => (false, code),
        _ => (false, descr.as_str()),
    };
    let kind = match code {
        "f4" => Kind::F32,
        "f8" => Kind::F64,
        "i4" => Kind::I32,
        "i8" => Kind::I64,
        _ => bail!("unsupported dtype '{descr}' (float32, float64, int32 and int64 are supported)"),
    };
    Ok(Header {
        descr,
        kind,
        big_endian,
        fortran_order,
        shape,
    })
}

/// The text following `'key':` in the dict, with leading spaces removed.
fn dict_value<'a>(text: &'a str, key: &str) -> Result<&'a str> {
    let start = [format!("'{key}'"), format!("\"{key}\"")]
        .iter()
        .find_map(|k| text.find(k.as_str()).map(|i| i + k.len()))
        .with_context(|| format!("header has no '{key}' entry"))?;
    let rest = text[start..].trim_start();
    let rest = rest
        .strip_prefix(':')
        .with_context(|| format!("header entry '{key}' has no value"))?;
    Ok(rest.trim_start())
}

/// Reads `n` float values (f32 or f64, either byte order) into `out` as f32, a chunk at a time.
fn read_floats(r: &mut impl Read, header: &Header, n: usize, out: &mut Vec<f32>) -> Result<()> {
    let size = header.kind.size();
    let per_chunk = CHUNK_BYTES / size;
    let mut buf = vec![0u8; per_chunk.min(n.max(1)) * size];
    let mut left = n;
    while left > 0 {
        let take = left.min(per_chunk);
        let bytes = &mut buf[..take * size];
        r.read_exact(bytes).context("data section is truncated")?;
        match (header.kind, header.big_endian) {
            (Kind::F32, false) => out.extend(bytes.chunks_exact(4).map(|b| {
                f32::from_le_bytes(b.try_into().expect("chunks_exact(4) yields 4 bytes"))
            })),
            (Kind::F32, true) => out.extend(bytes.chunks_exact(4).map(|b| {
                f32::from_be_bytes(b.try_into().expect("chunks_exact(4) yields 4 bytes"))
            })),
            (Kind::F64, false) => out.extend(bytes.chunks_exact(8).map(|b| {
                f64::from_le_bytes(b.try_into().expect("chunks_exact(8) yields 8 bytes")) as f32
            })),
            (Kind::F64, true) => out.extend(bytes.chunks_exact(8).map(|b| {
                f64::from_be_bytes(b.try_into().expect("chunks_exact(8) yields 8 bytes")) as f32
            })),
            _ => bail!("expected float values, found '{}'", header.descr),
        }
        left -= take;
    }
    Ok(())
}

/// Fortran-order data of an N x D array is D x N row-major; this turns `src` (`rows` x `cols`
/// row-major) into its transpose. Costs one extra f32 copy, only for Fortran-order files.
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; src.len()];
    for (r, row) in src.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    /// Builds a .npy file by hand (any version, dtype, order) the way numpy lays it out.
    fn raw_npy(version: u8, descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let f = if fortran { "True" } else { "False" };
        let mut dict = format!("{{'descr': '{descr}', 'fortran_order': {f}, 'shape': {shape}, }}");
        let pre = if version == 1 { 10 } else { 12 };
        dict.push_str(&" ".repeat((64 - (pre + dict.len() + 1) % 64) % 64));
        dict.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[version, 0]);
        if version == 1 {
            out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(dict.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(dict.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn matrix_round_trips_and_header_is_aligned() {
        let dir = tmp();
        let path = dir.path().join("m.npy");
        let m = Matrix::new(3, 5, (0..15).map(|x| x as f32 * 0.25 - 1.0).collect()).unwrap();
        write_matrix(&path, &m).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            (bytes.len() - 15 * 4) % 64,
            0,
            "data must start 64-byte aligned"
        );
        assert_eq!(read_matrix(&path).unwrap(), m);
    }

    #[test]
    fn vectors_round_trip() {
        let dir = tmp();
        let pi = dir.path().join("i.npy");
        let pf = dir.path().join("f.npy");
        let ints = vec![-1, 0, 7, i64::MAX, i64::MIN];
        let floats = vec![0.5, -1e300, f64::MIN_POSITIVE, 3.0];
        write_i64(&pi, &ints).unwrap();
        write_f64(&pf, &floats).unwrap();
        assert_eq!(read_i64(&pi).unwrap(), ints);
        assert_eq!(read_f64(&pf).unwrap(), floats);
        write_i64(&pi, &[]).unwrap();
        assert!(read_i64(&pi).unwrap().is_empty());
    }

    #[test]
    fn f64_fortran_big_endian_and_v2_v3_are_read() {
        let dir = tmp();
        let path = dir.path().join("x.npy");
        // The 2 x 3 matrix [[1,2,3],[4,5,6]].
        let want = Matrix::new(2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let c_order = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0];
        let f_order = [1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0];
        let le = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>();
        let be = |v: &[f64]| v.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<_>>();
        let f32le = |v: &[f64]| {
            v.iter()
                .flat_map(|&x| (x as f32).to_le_bytes())
                .collect::<Vec<_>>()
        };
        let cases = [
            raw_npy(1, "<f8", false, "(2, 3)", &le(&c_order)),
            raw_npy(2, "<f8", false, "(2, 3)", &le(&c_order)),
            raw_npy(3, "<f8", false, "(2, 3)", &le(&c_order)),
            raw_npy(1, ">f8", false, "(2, 3)", &be(&c_order)),
            raw_npy(1, "<f8", true, "(2, 3)", &le(&f_order)),
            raw_npy(1, "<f4", true, "(2, 3)", &f32le(&f_order)),
        ];
        for (i, bytes) in cases.iter().enumerate() {
            std::fs::write(&path, bytes).unwrap();
            assert_eq!(read_matrix(&path).unwrap(), want, "case {i}");
        }
    }

    #[test]
    fn wrong_dtype_shape_or_size_is_a_clear_error() {
        let dir = tmp();
        let path = dir.path().join("bad.npy");
        let cases: [(Vec<u8>, &str); 5] = [
            (
                raw_npy(1, "<i8", false, "(1, 2)", &[0; 16]),
                "float32 or float64",
            ),
            (raw_npy(1, "<f4", false, "(4,)", &[0; 16]), "2-D"),
            (
                raw_npy(1, "<c8", false, "(1, 1)", &[0; 8]),
                "unsupported dtype",
            ),
            (raw_npy(1, "<f4", false, "(2, 2)", &[0; 12]), "truncated"),
            (
                raw_npy(1, "<f4", false, "(2, 2)", &[0; 20]),
                "truncated or corrupt",
            ),
        ];
        for (bytes, needle) in cases {
            std::fs::write(&path, bytes).unwrap();
            let err = format!("{:#}", read_matrix(&path).unwrap_err());
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
            assert!(err.contains("bad.npy"), "{err:?} should name the file");
        }
        std::fs::write(&path, raw_npy(1, "<f4", false, "(2, 2)", &[0; 16])).unwrap();
        assert!(read_i64(&path).is_err(), "a matrix is not a 1-D int vector");
    }

    #[test]
    fn huge_announced_shape_does_not_allocate() {
        let dir = tmp();
        let path = dir.path().join("huge.npy");
        let bytes = raw_npy(1, "<f4", false, "(100000000000, 100000000000)", &[0; 8]);
        std::fs::write(&path, bytes).unwrap();
        assert!(read_matrix(&path).is_err());
    }

    #[test]
    fn a_dtype_starting_with_a_multibyte_character_is_an_error() {
        // Found by tests/fuzz_inputs.rs: the byte order was split off by byte, inside the 'é'.
        let dir = tmp();
        let path = dir.path().join("e.npy");
        std::fs::write(&path, raw_npy(1, "\u{e9}>f8", false, "(2, 2)", &[0; 32])).unwrap();
        let err = format!("{:#}", read_matrix(&path).unwrap_err());
        assert!(err.contains("unsupported dtype"), "{err}");
    }

    #[test]
    fn random_garbage_never_panics() {
        let dir = tmp();
        let path = dir.path().join("fuzz.npy");
        let mut rng = StdRng::seed_from_u64(7);
        let valid = raw_npy(1, "<f4", false, "(2, 2)", &[0; 16]);
        for i in 0..400 {
            let bytes: Vec<u8> = if i % 2 == 0 {
                let len = rng.random_range(0..200);
                (0..len).map(|_| rng.random()).collect()
            } else {
                // Corrupt a few bytes of a valid file, mostly in the header.
                let mut b = valid.clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..b.len());
                    b[at] = rng.random();
                }
                b.truncate(rng.random_range(0..=b.len()));
                b
            };
            std::fs::write(&path, &bytes).unwrap();
            let _ = read_matrix(&path);
            let _ = read_i64(&path);
            let _ = read_f64(&path);
        }
    }
}
