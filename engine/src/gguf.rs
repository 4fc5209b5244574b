//! Reading GGUF files: metadata, validation, and quantized tensors that point
//! straight into a memory map of the file.
//!
//! candle's own loader copies every tensor into a heap `Vec`; here a tensor on
//! the CPU is a view of the mapped file, so loading costs no copy, pages are
//! read on first touch, and several loads of one file share the page cache.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::k_quants::{self, GgmlType};
use candle_core::quantized::{GgmlDType, QStorage, QTensor, QuantizedType};
use candle_core::{CpuStorage, Device, Tensor};
use half::{bf16, f16};
use memmap2::Mmap;

use crate::error::{Error, Result};

/// An open, validated GGUF file.
#[derive(Debug)]
pub struct Gguf {
    path: PathBuf,
    map: Arc<Mmap>,
    metadata: HashMap<String, Value>,
    tensors: HashMap<String, TensorInfo>,
    data_offset: u64,
}

/// Most array elements the metadata of one file may hold, all arrays
/// together. Each becomes a value of a few dozen bytes in memory, so a small
/// file declaring one huge array of bytes would otherwise cost gigabytes
/// before any check could refuse it. The largest real vocabularies (Gemma's
/// 262 144 tokens with their scores and types, Llama 3's tokens and 280 000
/// merges) hold under a million.
pub const MAX_METADATA_ELEMENTS: u64 = 1 << 22;

/// The ggml tensor types candle reads (and so rbee runs), by their number in
/// GGUF, with the names llama.cpp and Hugging Face show.
const RUNNABLE_TYPES: [(u32, &str); 15] = [
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (6, "Q5_0"),
    (7, "Q5_1"),
    (8, "Q8_0"),
    (9, "Q8_1"),
    (10, "Q2_K"),
    (11, "Q3_K"),
    (12, "Q4_K"),
    (13, "Q5_K"),
    (14, "Q6_K"),
    (15, "Q8_K"),
    (30, "BF16"),
];

/// Names of the ggml tensor types rbee cannot run, so that a refusal says
/// which quantization the file uses (numbers from ggml's `ggml_type`).
fn unrunnable_type_name(ty: u32) -> Option<&'static str> {
    Some(match ty {
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

/// Why [`check_header`] refused a file.
#[derive(Debug)]
enum HeaderRefusal {
    /// A length runs past the end of the file.
    Truncated(String),
    /// The header is readable but declares something we will not allocate.
    Refused(String),
    /// A tensor is stored in a type rbee cannot compute with.
    UnrunnableType { tensor: String, ty: u32 },
}

/// Walks the header of a GGUF file (metadata and tensor descriptions) without
/// allocating, checking that every length fits in the file, that all arrays
/// together hold at most [`MAX_METADATA_ELEMENTS`], and that every tensor is
/// of a type rbee can run.
fn check_header(bytes: &[u8]) -> std::result::Result<(), HeaderRefusal> {
    use HeaderRefusal::{Refused, Truncated};
    struct Cur<'a> {
        b: &'a [u8],
        at: usize,
        wide: bool,
        elements: u64,
    }
    impl Cur<'_> {
        fn take(&mut self, n: u64) -> std::result::Result<&[u8], HeaderRefusal> {
            let left = (self.b.len() - self.at) as u64;
            if n > left {
                return Err(Truncated(format!("a length of {n} bytes at byte {} runs past the end of the file", self.at)));
            }
            let s = &self.b[self.at..self.at + n as usize];
            self.at += n as usize;
            Ok(s)
        }
        fn u32(&mut self) -> std::result::Result<u32, HeaderRefusal> {
            Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
        }
        fn len(&mut self) -> std::result::Result<u64, HeaderRefusal> {
            if self.wide { Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"))) } else { self.u32().map(u64::from) }
        }
        fn value(&mut self, ty: u32, depth: usize) -> std::result::Result<(), HeaderRefusal> {
            let fixed = |ty: u32| match ty {
                0 | 1 | 7 => Some(1u64),
                2 | 3 => Some(2),
                4..=6 => Some(4),
                10..=12 => Some(8),
                _ => None,
            };
            match ty {
                8 => {
                    let n = self.len()?;
                    self.take(n).map(|_| ())
                }
                9 => {
                    if depth > 2 {
                        return Err(Refused("arrays nested too deep".into()));
                    }
                    let inner = self.u32()?;
                    let n = self.len()?;
                    self.elements = self.elements.saturating_add(n);
                    if self.elements > MAX_METADATA_ELEMENTS {
                        return Err(Refused(format!("its arrays hold more than {MAX_METADATA_ELEMENTS} elements")));
                    }
                    match fixed(inner) {
                        Some(size) => self.take(n.saturating_mul(size)).map(|_| ()),
                        None => (0..n).try_for_each(|_| self.value(inner, depth + 1)),
                    }
                }
                t => match fixed(t) {
                    Some(size) => self.take(size).map(|_| ()),
                    None => Err(Refused(format!("unknown value type {t}"))),
                },
            }
        }
    }
    let mut c = Cur { b: bytes, at: 4, wide: true, elements: 0 };
    let version = c.u32()?;
    c.wide = version >= 2;
    let tensors = c.len()?;
    let kvs = c.len()?;
    for _ in 0..kvs {
        let key = c.len()?;
        c.take(key)?;
        let ty = c.u32()?;
        c.value(ty, 0)?;
    }
    // Each tensor: name, dimension count, dimensions, type, offset.
    for _ in 0..tensors {
        let name = c.len()?;
        let name = String::from_utf8_lossy(c.take(name)?).into_owned();
        let dims = c.u32()?;
        if dims > 4 {
            return Err(Refused(format!("tensor `{name}` has {dims} dimensions (at most 4)")));
        }
        for _ in 0..dims {
            c.len()?;
        }
        let ty = c.u32()?;
        if !RUNNABLE_TYPES.iter().any(|&(t, _)| t == ty) {
            return Err(HeaderRefusal::UnrunnableType { tensor: name, ty });
        }
        c.take(8)?;
    }
    Ok(())
}

impl Gguf {
    /// Maps `path` and parses its header, checking that every tensor lies
    /// inside the file.
    ///
    /// # Errors
    /// [`Error::InvalidModel`] for a file that is not GGUF, is truncated, or
    /// whose header is corrupt; [`Error::Io`] if it cannot be opened.
    pub fn open(path: &Path) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidModel { path: path.to_path_buf(), reason };
        let file = std::fs::File::open(path).map_err(Error::io(format!("opening {}", path.display())))?;
        let len = file.metadata().map_err(Error::io("reading file size"))?.len();
        if len < 8 {
            return Err(invalid(format!("file is {len} bytes long, too short for a GGUF header")));
        }
        // SAFETY: the map is read-only; a model file changed underneath a
        // running engine is outside what we can defend against, as with any
        // mmap-based loader (llama.cpp does the same).
        let map = unsafe { Mmap::map(&file) }.map_err(Error::io(format!("mapping {}", path.display())))?;
        if &map[..4] != b"GGUF" {
            return Err(invalid("it does not start with the GGUF magic bytes".into()));
        }
        check_header(&map).map_err(|refusal| {
            invalid(match refusal {
                HeaderRefusal::Truncated(reason) => format!("header cannot be parsed ({reason}); the file may be truncated or corrupt"),
                HeaderRefusal::Refused(reason) => format!("metadata refused before reading it: {reason}"),
                HeaderRefusal::UnrunnableType { tensor, ty } => {
                    let name = unrunnable_type_name(ty).map_or_else(|| format!("ggml type {ty}"), |n| n.to_string());
                    let runnable: Vec<&str> = RUNNABLE_TYPES.iter().map(|&(_, n)| n).collect();
                    format!(
                        "tensor `{tensor}` is stored as {name}, which rbee cannot run yet; rbee runs {}. \
                         Pick a file of another quantization from the same repository",
                        runnable.join(", ")
                    )
                }
            })
        })?;
        let mut cursor = std::io::Cursor::new(&map[..]);
        let content = Content::read(&mut cursor).map_err(|e| invalid(format!("header cannot be parsed ({e}); the file may be truncated or corrupt")))?;
        for (name, info) in &content.tensor_infos {
            let elems: usize = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            if !elems.is_multiple_of(block) {
                return Err(invalid(format!("tensor `{name}` has {elems} elements, not a multiple of its block size {block}")));
            }
            let bytes = (elems / block * info.ggml_dtype.type_size()) as u64;
            let end = content.tensor_data_offset + info.offset + bytes;
            if end > len {
                return Err(invalid(format!("truncated: tensor `{name}` ends at byte {end} but the file has only {len} bytes")));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            map: Arc::new(map),
            metadata: content.metadata,
            tensors: content.tensor_infos,
            data_offset: content.tensor_data_offset,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `general.architecture`.
    ///
    /// # Errors
    /// When the key is missing.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    pub fn has(&self, key: &str) -> bool {
        self.metadata.contains_key(key)
    }

    pub fn value(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn missing(&self, key: &str, want: &str) -> Error {
        Error::InvalidModel { path: self.path.clone(), reason: format!("metadata `{key}` is missing or not {want}") }
    }

    pub fn get_u32(&self, key: &str) -> Result<u32> {
        match self.metadata.get(key) {
            Some(Value::U8(v)) => Ok(u32::from(*v)),
            Some(Value::U16(v)) => Ok(u32::from(*v)),
            Some(Value::U32(v)) => Ok(*v),
            Some(Value::I32(v)) if *v >= 0 => Ok(*v as u32),
            Some(Value::U64(v)) if *v <= u64::from(u32::MAX) => Ok(*v as u32),
            Some(Value::I64(v)) if *v >= 0 && *v <= i64::from(u32::MAX) => Ok(*v as u32),
            _ => Err(self.missing(key, "an unsigned integer")),
        }
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        match self.metadata.get(key) {
            Some(Value::U64(v)) => Ok(*v),
            Some(Value::I64(v)) if *v >= 0 => Ok(*v as u64),
            _ => self.get_u32(key).map(u64::from),
        }
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        match self.metadata.get(key) {
            Some(Value::F32(v)) => Ok(*v),
            Some(Value::F64(v)) => Ok(*v as f32),
            _ => Err(self.missing(key, "a float")),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.metadata.get(key) {
            Some(Value::Bool(v)) => Ok(*v),
            _ => Err(self.missing(key, "a bool")),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.metadata.get(key) {
            Some(Value::String(v)) => Ok(v),
            _ => Err(self.missing(key, "a string")),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<&[Value]> {
        match self.metadata.get(key) {
            Some(Value::Array(v)) => Ok(v),
            _ => Err(self.missing(key, "an array")),
        }
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.get(name).ok_or_else(|| Error::InvalidModel { path: self.path.clone(), reason: format!("tensor `{name}` is missing") })
    }

    /// The most common quantized type among the 2-D weights, e.g. `Q4_K`.
    pub fn quantization(&self) -> String {
        if let Ok(ft) = self.get_u32("general.file_type")
            && let Some(name) = file_type_name(ft)
        {
            return name.to_string();
        }
        let mut counts: HashMap<GgmlDType, usize> = HashMap::new();
        for info in self.tensors.values().filter(|i| i.shape.rank() == 2) {
            *counts.entry(info.ggml_dtype).or_default() += 1;
        }
        counts.into_iter().max_by_key(|(_, n)| *n).map(|(d, _)| format!("{d:?}")).unwrap_or_else(|| "unknown".into())
    }

    /// Bytes of tensor data (what the weights occupy once resident).
    pub fn weights_bytes(&self) -> u64 {
        self.tensors.values().map(|i| (i.shape.elem_count() / i.ggml_dtype.block_size() * i.ggml_dtype.type_size()) as u64).sum()
    }

    fn bytes_of(&self, info: &TensorInfo) -> (usize, usize) {
        let start = (self.data_offset + info.offset) as usize;
        let len = info.shape.elem_count() / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        (start, len)
    }

    /// A quantized tensor. On the CPU it reads the mapped file in place.
    ///
    /// # Errors
    /// When the tensor is missing or the device cannot take it.
    pub fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let info = self.tensor_info(name)?;
        let (start, len) = self.bytes_of(info);
        let storage = match (device, info.ggml_dtype) {
            // Without the AVX2 kernels, Q5_0 becomes Q8_0, which candle has
            // SIMD code for on every CPU.
            (Device::Cpu, GgmlDType::Q5_0) if !crate::kernels::AVAILABLE => {
                let q8 = q5_0_to_q8_0(&self.map[start..start + len]);
                QStorage::Cpu(Box::new(Mapped(Blocks::Owned(blocks_from_bytes::<k_quants::BlockQ8_0>(&q8)))))
            }
            (Device::Cpu, dtype) => QStorage::Cpu(mapped_storage(dtype, self.map.clone(), start, len)),
            (_, dtype) => QStorage::from_data(std::borrow::Cow::Borrowed(&self.map[start..start + len]), device, dtype)?,
        };
        Ok(QTensor::new(storage, info.shape.clone())?)
    }

    /// A tensor dequantized to f32 (norm weights, biases: small ones only).
    ///
    /// # Errors
    /// When the tensor is missing.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        Ok(self.qtensor(name, device)?.dequantize(device)?)
    }
}

/// Rewrites Q5_0 blocks as Q8_0 blocks, exactly: a Q5_0 value is `d * q`
/// with `q` in -16..=15, which Q8_0 (`d * q`, `q` an i8) holds unchanged.
/// Both multiply against Q8_0-quantized activations, so products are the
/// same; candle has SIMD kernels for Q8_0 but only scalar code for Q5_0.
fn q5_0_to_q8_0(src: &[u8]) -> Vec<u8> {
    const IN: usize = 22; // f16 d, u32 high bits, 16 bytes of low nibbles
    const OUT: usize = 34; // f16 d, 32 i8
    let mut out = vec![0u8; src.len() / IN * OUT];
    for (b, o) in src.chunks_exact(IN).zip(out.chunks_exact_mut(OUT)) {
        o[..2].copy_from_slice(&b[..2]);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for j in 0..16 {
            let lo = b[6 + j];
            let x0 = ((lo & 0x0F) as i32 | (((qh >> j) << 4) & 0x10) as i32) - 16;
            let x1 = ((lo >> 4) as i32 | ((qh >> (j + 12)) & 0x10) as i32) - 16;
            o[2 + j] = x0 as i8 as u8;
            o[2 + j + 16] = x1 as i8 as u8;
        }
    }
    out
}

/// Names of llama.cpp's `general.file_type` values (`llama_ftype`).
fn file_type_name(ft: u32) -> Option<&'static str> {
    Some(match ft {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => return None,
    })
}

fn mapped_storage(dtype: GgmlDType, map: Arc<Mmap>, start: usize, len: usize) -> Box<dyn QuantizedType> {
    fn make<T: GgmlType + Send + Sync + 'static>(map: Arc<Mmap>, start: usize, len: usize) -> Box<dyn QuantizedType> {
        Box::new(Mapped::<T>::new(map, start, len))
    }
    match dtype {
        GgmlDType::F32 => make::<f32>(map, start, len),
        GgmlDType::F16 => make::<f16>(map, start, len),
        GgmlDType::BF16 => make::<bf16>(map, start, len),
        GgmlDType::Q4_0 => make::<k_quants::BlockQ4_0>(map, start, len),
        GgmlDType::Q4_1 => make::<k_quants::BlockQ4_1>(map, start, len),
        GgmlDType::Q5_0 => make::<k_quants::BlockQ5_0>(map, start, len),
        GgmlDType::Q5_1 => make::<k_quants::BlockQ5_1>(map, start, len),
        GgmlDType::Q8_0 => make::<k_quants::BlockQ8_0>(map, start, len),
        GgmlDType::Q8_1 => make::<k_quants::BlockQ8_1>(map, start, len),
        GgmlDType::Q2K => make::<k_quants::BlockQ2K>(map, start, len),
        GgmlDType::Q3K => make::<k_quants::BlockQ3K>(map, start, len),
        GgmlDType::Q4K => make::<k_quants::BlockQ4K>(map, start, len),
        GgmlDType::Q5K => make::<k_quants::BlockQ5K>(map, start, len),
        GgmlDType::Q6K => make::<k_quants::BlockQ6K>(map, start, len),
        GgmlDType::Q8K => make::<k_quants::BlockQ8K>(map, start, len),
    }
}

/// Quantized blocks copied out of raw GGUF bytes.
pub(crate) fn blocks_from_bytes<T: GgmlType>(bytes: &[u8]) -> Vec<T> {
    let count = bytes.len() / std::mem::size_of::<T>();
    let mut owned: Vec<T> = (0..count).map(|_| T::zeros()).collect();
    // SAFETY: GgmlType blocks are plain old data (ints, floats, byte arrays):
    // any byte pattern is a valid value; the copy stays inside both buffers.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), owned.as_mut_ptr() as *mut u8, count * std::mem::size_of::<T>()) };
    owned
}

/// Blocks of one tensor: a view into the mapped file, or an owned copy when
/// the view would be misaligned or the blocks are overwritten.
enum Blocks<T> {
    Mapped { map: Arc<Mmap>, start: usize, count: usize, _t: PhantomData<T> },
    Owned(Vec<T>),
}

struct Mapped<T>(Blocks<T>);

impl<T: GgmlType> Mapped<T> {
    fn new(map: Arc<Mmap>, start: usize, len: usize) -> Self {
        let count = len / std::mem::size_of::<T>();
        if (map[start..].as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
            Self(Blocks::Mapped { map, start, count, _t: PhantomData })
        } else {
            Self(Blocks::Owned(blocks_from_bytes(&map[start..start + len])))
        }
    }

    fn blocks(&self) -> &[T] {
        match &self.0 {
            // SAFETY: `Gguf::open` checked the range lies inside the map, `new`
            // checked alignment, and GgmlType blocks are plain old data.
            Blocks::Mapped { map, start, count, .. } => unsafe { std::slice::from_raw_parts(map.as_ptr().add(*start) as *const T, *count) },
            Blocks::Owned(v) => v,
        }
    }

    fn blocks_mut(&mut self) -> &mut Vec<T> {
        if let Blocks::Mapped { count, .. } = &self.0 {
            let mut owned: Vec<T> = (0..*count).map(|_| T::zeros()).collect();
            let src = self.blocks();
            // SAFETY: same length, fresh allocation, plain-old-data blocks.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), owned.as_mut_ptr(), src.len()) };
            self.0 = Blocks::Owned(owned);
        }
        match &mut self.0 {
            Blocks::Owned(v) => v,
            Blocks::Mapped { .. } => unreachable!("converted to owned above"),
        }
    }
}

impl<T: GgmlType + Send + Sync + 'static> QuantizedType for Mapped<T> {
    fn dtype(&self) -> GgmlDType {
        T::DTYPE
    }
    fn matmul_t(&self, mkn: (usize, usize, usize), lhs: &[f32], dst: &mut [f32]) -> candle_core::Result<()> {
        k_quants::matmul(mkn, lhs, self.blocks(), dst)
    }
    fn matmul_t_f16(&self, mkn: (usize, usize, usize), lhs: &[f16], dst: &mut [f16]) -> candle_core::Result<()> {
        k_quants::matmul_f16(mkn, lhs, self.blocks(), dst)
    }
    fn embedding(&self, ids: &[u32], rows: usize, hidden: usize) -> candle_core::Result<CpuStorage> {
        if !hidden.is_multiple_of(T::BLCK_SIZE) {
            candle_core::bail!("embedding width {hidden} is not a multiple of the block size {}", T::BLCK_SIZE)
        }
        let per_row = hidden / T::BLCK_SIZE;
        let blocks = self.blocks();
        if blocks.len() != rows * per_row {
            candle_core::bail!("embedding has {} blocks, expected {}", blocks.len(), rows * per_row)
        }
        let mut out = vec![0f32; ids.len() * hidden];
        for (i, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= rows {
                candle_core::bail!("token id {id} is out of range for a vocabulary of {rows}")
            }
            T::to_float(&blocks[id * per_row..(id + 1) * per_row], &mut out[i * hidden..(i + 1) * hidden]);
        }
        Ok(CpuStorage::F32(out))
    }
    fn dequantize(&self, elem_count: usize) -> candle_core::Result<CpuStorage> {
        let mut ys = vec![0f32; elem_count];
        T::to_float(self.blocks(), &mut ys);
        Ok(CpuStorage::F32(ys))
    }
    fn storage_size_in_bytes(&self) -> usize {
        std::mem::size_of_val(self.blocks())
    }
    fn as_ptr(&self) -> *const u8 {
        self.blocks().as_ptr() as *const u8
    }
    fn block_size(&self) -> usize {
        T::BLCK_SIZE
    }
    fn from_float(&mut self, xs: &[f32]) {
        T::from_float(xs, self.blocks_mut())
    }
    fn from_float_imatrix(&mut self, xs: &[f32], imatrix_weights: &[f32], n_per_row: usize) {
        T::from_float_imatrix(xs, self.blocks_mut(), imatrix_weights, n_per_row)
    }
    fn size(&self) -> usize {
        self.storage_size_in_bytes()
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    #[test]
    fn q5_0_becomes_q8_0_without_changing_a_value() {
        let x = Tensor::randn(0f32, 1.0, (8, 64), &Device::Cpu).unwrap();
        let q5 = QTensor::quantize(&x, GgmlDType::Q5_0).unwrap();
        let bytes = q5.data().unwrap().to_vec();
        let q8 = super::q5_0_to_q8_0(&bytes);
        let storage = candle_core::quantized::QStorage::from_data(std::borrow::Cow::Owned(q8), &Device::Cpu, GgmlDType::Q8_0).unwrap();
        let q8 = QTensor::new(storage, (8, 64)).unwrap();
        let a = q5.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = q8.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
    }

    /// A GGUF v3 header with one metadata entry `key` of `ty` holding `value`.
    fn header(entries: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend((entries.len() as u64).to_le_bytes());
        for (k, ty, v) in entries {
            b.extend((k.len() as u64).to_le_bytes());
            b.extend(k.as_bytes());
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        b
    }

    fn array(inner: u32, n: u64, body: &[u8]) -> Vec<u8> {
        let mut v = inner.to_le_bytes().to_vec();
        v.extend(n.to_le_bytes());
        v.extend(body);
        v
    }

    #[test]
    fn metadata_that_would_cost_gigabytes_is_refused_before_it_is_read() {
        // 50 million one-byte elements: 50 MB on disk, ~1.6 GB as values.
        let n = 50_000_000u64;
        let bomb = header(&[("general.architecture", 8, [5u64.to_le_bytes().as_slice(), b"llama"].concat()), ("x", 9, array(0, n, &vec![0u8; n as usize]))]);
        let err = super::check_header(&bomb).unwrap_err();
        assert!(matches!(&err, super::HeaderRefusal::Refused(e) if e.contains("more than")), "{err:?}");
        // A length past the end of the file.
        let short = header(&[("x", 8, [100u64.to_le_bytes().as_slice(), b"abc"].concat())]);
        let err = super::check_header(&short).unwrap_err();
        assert!(matches!(&err, super::HeaderRefusal::Truncated(e) if e.contains("past the end")), "{err:?}");
        let strings = header(&[("x", 9, array(8, 3, &[1u64.to_le_bytes().as_slice(), b"a", &1u64.to_le_bytes(), b"b", &1u64.to_le_bytes()].concat()))]);
        assert!(super::check_header(&strings).is_err(), "third string missing");
        // A real vocabulary's size passes.
        let ok = header(&[("scores", 9, array(6, 262_144, &vec![0u8; 262_144 * 4])), ("n", 4, 7u32.to_le_bytes().to_vec())]);
        super::check_header(&ok).unwrap();
    }
}
