//! GGUF v2/v3 reader: metadata key-values and tensor infos from the header, tensor bytes read on demand.
//!
//! The file is not mapped (the workspace has no `unsafe`) and not read whole: the header is parsed through a
//! buffered reader and each tensor is read into a caller's buffer, so load-time memory stays one tensor deep.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::LlmError;

/// A metadata value. Arrays keep their element values (the tokenizer needs the string and integer arrays).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The ggml tensor types this engine reads. Numbers are the on-disk type ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    BF16,
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block).
    pub fn block_layout(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q2K => (256, 84),
            GgmlType::Q3K => (256, 110),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q5K => (256, 176),
            GgmlType::Q6K => (256, 210),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (fastest varying).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute offset of the tensor's bytes in the file.
    pub offset: u64,
    pub n_bytes: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    file: File,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile, LlmError> {
        let io_err = |source| LlmError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let mut reader = HeaderReader {
            inner: BufReader::with_capacity(1 << 20, file.try_clone().map_err(io_err)?),
            position: 0,
            path: path.to_path_buf(),
        };
        let magic = reader.bytes::<4>()?;
        if &magic != b"GGUF" {
            return Err(reader.invalid(format!("bad magic {magic:?}, expected \"GGUF\"")));
        }
        let version = reader.u32()?;
        if !(2..=3).contains(&version) {
            return Err(LlmError::Unsupported {
                path: path.to_path_buf(),
                reason: format!("gguf version {version} (only 2 and 3 are read)"),
            });
        }
        let tensor_count = reader.u64()?;
        let kv_count = reader.u64()?;
        let mut metadata = HashMap::new();
        for _ in 0..kv_count {
            let key = reader.string()?;
            let value_type = reader.u32()?;
            let value = reader.value(value_type, 0)?;
            metadata.insert(key, value);
        }
        let mut raw_tensors = Vec::new();
        for _ in 0..tensor_count {
            let name = reader.string()?;
            let n_dims = reader.u32()?;
            if n_dims > 4 {
                return Err(reader.invalid(format!("tensor {name} has {n_dims} dimensions")));
            }
            let mut dims = Vec::new();
            for _ in 0..n_dims {
                dims.push(reader.u64()?);
            }
            let type_id = reader.u32()?;
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| LlmError::Unsupported {
                path: path.to_path_buf(),
                reason: format!(
                    "tensor {name} has ggml type {type_id}, which this engine cannot read"
                ),
            })?;
            let offset = reader.u64()?;
            raw_tensors.push((name, dims, ggml_type, offset));
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32)
            .max(1);
        let data_start = reader.position.div_ceil(alignment) * alignment;
        let file_len = file.metadata().map_err(io_err)?.len();
        let mut tensors = Vec::new();
        for (name, dims, ggml_type, offset) in raw_tensors {
            let (block_elements, block_bytes) = ggml_type.block_layout();
            if dims.first().copied().unwrap_or(0) % block_elements as u64 != 0 {
                return Err(reader.invalid(format!(
                    "tensor {name} row length {:?} is not a multiple of its block size {block_elements}",
                    dims.first()
                )));
            }
            // Checked: dims and offsets come from the file, and a wrapped product could pass the bounds check.
            let placed = || -> Option<(u64, u64)> {
                let n_elements = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d))?;
                let n_bytes =
                    (n_elements / block_elements as u64).checked_mul(block_bytes as u64)?;
                let absolute = data_start.checked_add(offset)?;
                (absolute.checked_add(n_bytes)? <= file_len).then_some((absolute, n_bytes))
            };
            let Some((absolute, n_bytes)) = placed() else {
                return Err(reader.invalid(format!(
                    "tensor {name} of dims {dims:?} at data offset {offset} does not fit in the file's {file_len} bytes"
                )));
            };
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset: absolute,
                n_bytes: n_bytes as usize,
            });
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            file,
        })
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Read a tensor's raw bytes into `buffer` (resized to fit).
    pub fn read_tensor(&mut self, info: &TensorInfo, buffer: &mut Vec<u8>) -> Result<(), LlmError> {
        let path = self.path.clone();
        let io_err = |source| LlmError::Io { path, source };
        buffer.resize(info.n_bytes, 0);
        self.file
            .seek(SeekFrom::Start(info.offset))
            .and_then(|_| self.file.read_exact(buffer))
            .map_err(io_err)
    }
}

struct HeaderReader {
    inner: BufReader<File>,
    position: u64,
    path: PathBuf,
}

impl HeaderReader {
    fn invalid(&self, reason: String) -> LlmError {
        LlmError::InvalidGguf {
            path: self.path.clone(),
            reason: format!("{reason} (at byte {})", self.position),
        }
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], LlmError> {
        let mut buf = [0u8; N];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| self.invalid(format!("truncated header: {e}")))?;
        self.position += N as u64;
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32, LlmError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64, LlmError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn string(&mut self) -> Result<String, LlmError> {
        let len = self.u64()?;
        // A string longer than the header could hold means a corrupt length, not a real string.
        if len > 1 << 30 {
            return Err(self.invalid(format!("string length {len} is implausible")));
        }
        // Grown as bytes arrive, so a corrupt length in a short file costs no more memory than the file holds.
        let mut buf = Vec::new();
        let read = (&mut self.inner)
            .take(len)
            .read_to_end(&mut buf)
            .map_err(|e| self.invalid(format!("failed to read string of length {len}: {e}")))?;
        if read as u64 != len {
            return Err(self.invalid(format!(
                "truncated string: {read} of its {len} bytes present"
            )));
        }
        self.position += len;
        // Token pieces may hold invalid UTF-8 in some files; keep them lossy rather than refusing the model.
        Ok(String::from_utf8(buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    fn value(&mut self, value_type: u32, depth: u32) -> Result<Value, LlmError> {
        Ok(match value_type {
            0 => Value::U8(u8::from_le_bytes(self.bytes()?)),
            1 => Value::I8(i8::from_le_bytes(self.bytes()?)),
            2 => Value::U16(u16::from_le_bytes(self.bytes()?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.bytes()?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes()?)),
            7 => Value::Bool(self.bytes::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(self.invalid("arrays nested too deep".to_string()));
                }
                let element_type = self.u32()?;
                let len = self.u64()?;
                if len > 1 << 28 {
                    return Err(self.invalid(format!("array length {len} is implausible")));
                }
                // Reserve at most what a header could plausibly hold; a corrupt length fails on the first
                // missing element instead of allocating gigabytes up front.
                let mut values = Vec::with_capacity(len.min(1 << 16) as usize);
                for _ in 0..len {
                    values.push(self.value(element_type, depth + 1)?);
                }
                Value::Array(values)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.bytes()?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes()?)),
            other => return Err(self.invalid(format!("unknown metadata value type {other}"))),
        })
    }
}
