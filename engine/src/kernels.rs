//! CPU matrix products for quantized weights, read in place from the
//! mapped file: Q8_0 and Q5_0 (signed values), Q4_0, Q4_1, Q5_1 and the
//! K-quants Q2_K…Q6_K (unsigned values with a per-group offset).
//!
//! Every type is seen as sub-blocks of 32 values, each value `scale·q + min`
//! with integer `q` and one scale and min per group of 32 (or of 16: Q2_K,
//! Q3_K and Q6_K): K-quant superblocks of 256 are eight such sub-blocks with
//! their own scales and mins. Blocks of 32 meet activations quantized to
//! Q8_0 (blocks of 32, as candle does): the integer dot product is exact,
//! and each block adds `Σq·x · scale·dx + Σx · min·dx` to the row's sum.
//! K-quants meet activations quantized to Q8_K (one scale per 256, as
//! llama.cpp does for them): their sub-block scales and mins are small
//! integers, applied in integer arithmetic, so floats are touched once per
//! superblock ([`KScales`]).
//!
//! Why not candle's: it multiplies Q8_0 rows one at a time with a single
//! accumulator and has scalar code only for Q5_0, its repacked kernels need
//! rows that are a multiple of 256 (Gemma 3 270M's are 640), and where they
//! apply they hold a second, repacked copy of the weights in memory and
//! round one row differently from several. Here four weight rows share each
//! activation block and keep independent accumulators (decoding), or eight
//! (sixteen) weight rows are unpacked once into a tile that every activation
//! row of a prompt meets; the instructions are picked at run time ([`Isa`]):
//! `vpdpbusd`/`vpdpwssd` where the CPU has AVX-VNNI or AVX512-VNNI (with
//! 512-bit vectors for the tile and the K-quant decode kernel there),
//! AVX2's `maddubs` otherwise. Every path gives every row exactly
//! [`dot_ref`]'s result.

use candle_core::quantized::k_quants::{BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0};
use candle_core::quantized::{GgmlDType, GgmlType, QTensor};

/// Whether this build has the kernels (x86-64 with AVX2, which the release
/// baseline x86-64-v3 guarantees).
pub(crate) const AVAILABLE: bool = cfg!(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"));

/// A weight block type the kernels multiply against 8-bit activations
/// (Q8_0, or Q8_K for [`Weight::K`] types).
pub(crate) trait Weight: GgmlType + Sync {
    /// How the SIMD kernels unpack a sub-block's values.
    type Simd: imp::Unpack;
    /// Values are unsigned (0..=63) with a min per block or group; otherwise
    /// signed (-128..=127) with none.
    const UNSIGNED: bool;
    /// The 32 values `q` of sub-block `s`, one by one (for [`dot_ref`]).
    fn values(&self, s: usize) -> [i8; 32];

    /// A superblock of 256 whose sub-block scales are small integers (the
    /// K-quants): it meets Q8_K activations (one scale per 256), the scales
    /// are applied in integer arithmetic, and floats are touched once per
    /// superblock ([`KScales`]).
    const K: bool = false;

    /// The block's scales: for [`Weight::K`] types as integers, for
    /// blocks of 32 just `d` and `dm` (`a` and `b` all 1).
    fn int_scales(&self) -> KScales;
}

/// A block's scales as integers: value i of group g (16 values) is
/// `d·a[g]·q_i + dm·b[g]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KScales {
    pub(crate) a: [i16; 16],
    pub(crate) b: [i16; 16],
    pub(crate) d: f32,
    pub(crate) dm: f32,
}

/// The scales of a block of 32: value `d·q + dm`.
#[inline(always)]
fn flat(d: f32, dm: f32) -> KScales {
    KScales { a: [1; 16], b: [1; 16], d, dm }
}

/// Sub-blocks of 32 values in one block of `W` (used by the x86 kernels).
#[cfg_attr(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")), allow(dead_code))]
const fn subs<W: Weight>() -> usize {
    W::BLCK_SIZE / 32
}

/// A block's bytes (blocks are `repr(C)` in the GGUF layout).
fn block_bytes<T>(b: &T) -> &[u8] {
    // SAFETY: a block is plain old data of size_of::<T>() bytes.
    unsafe { std::slice::from_raw_parts(b as *const T as *const u8, std::mem::size_of::<T>()) }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Value j of 32 packed as 16 bytes: low nibbles hold values 0..16, high
/// nibbles 16..32.
fn nibble(qs: &[u8], j: usize) -> u8 {
    if j < 16 { qs[j] & 0x0F } else { qs[j - 16] >> 4 }
}

/// [`Weight::int_scales`] of a Q4_K or Q5_K superblock: each 6-bit scale
/// and min serves both halves of its sub-block of 32.
#[inline(always)]
fn k_int_scales(b: &[u8]) -> KScales {
    let (scales, mins) = k_scales_mins_6bit(b);
    let (mut a, mut m) = ([0i16; 16], [0i16; 16]);
    for s in 0..8 {
        let byte = |v: [u32; 2]| i16::from((v[s / 4] >> (8 * (s % 4))) as u8);
        (a[2 * s], a[2 * s + 1], m[2 * s], m[2 * s + 1]) = (byte(scales), byte(scales), byte(mins), byte(mins));
    }
    KScales { a, b: m, d: f16_at(b, 0), dm: -f16_at(b, 2) }
}

/// The eight 6-bit scales and eight mins of a Q4_K or Q5_K superblock, a
/// byte each in two pairs of words, unpacked four at a time from the twelve
/// packed bytes (ggml's `get_scale_min_k4` layout).
#[inline(always)]
fn k_scales_mins_6bit(b: &[u8]) -> ([u32; 2], [u32; 2]) {
    let w = |i: usize| u32::from_le_bytes([b[4 + i], b[5 + i], b[6 + i], b[7 + i]]);
    let (w0, w1, w2) = (w(0), w(4), w(8));
    let (low6, low4, top2) = (0x3f3f_3f3f, 0x0f0f_0f0f, 0x0303_0303);
    // Scales 0..4 and mins 0..4 are the low six bits of bytes 0..8; scales
    // and mins 4..8 take four bits from bytes 8..12 and their top two bits
    // from the top of bytes 0..8.
    ([w0 & low6, (w2 & low4) | (((w0 >> 6) & top2) << 4)], [w1 & low6, ((w2 >> 4) & low4) | (((w1 >> 6) & top2) << 4)])
}

/// Value l of sub-block `s` of a K-quant's 128 bytes of nibbles: 64-value
/// chunk s/2, low nibbles for even `s`, high for odd.
fn k_nibble(qs: &[u8], s: usize, l: usize) -> u8 {
    (qs[32 * (s / 2) + l] >> (4 * (s % 2))) & 0x0F
}

impl Weight for BlockQ8_0 {
    type Simd = imp::Q8;
    const UNSIGNED: bool = false;
    #[inline(always)]
    fn int_scales(&self) -> KScales {
        flat(f16_at(block_bytes(self), 0), 0.0)
    }
    fn values(&self, _s: usize) -> [i8; 32] {
        let b = block_bytes(self);
        std::array::from_fn(|j| b[2 + j] as i8)
    }
}

impl Weight for BlockQ5_0 {
    type Simd = imp::Q5;
    const UNSIGNED: bool = false;
    #[inline(always)]
    fn int_scales(&self) -> KScales {
        flat(f16_at(block_bytes(self), 0), 0.0)
    }
    /// f16 scale, u32 `qh` (bit j: fifth bit of value j), 16 bytes of
    /// nibbles; a value is the five bits minus 16.
    fn values(&self, _s: usize) -> [i8; 32] {
        let b = block_bytes(self);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        std::array::from_fn(|j| (nibble(&b[6..], j) | ((((qh >> j) & 1) as u8) << 4)) as i8 - 16)
    }
}

impl Weight for BlockQ4_0 {
    type Simd = imp::Q40;
    const UNSIGNED: bool = true;
    /// f16 scale, 16 bytes of nibbles; a value is `d·(q - 8)`.
    #[inline(always)]
    fn int_scales(&self) -> KScales {
        let d = f16_at(block_bytes(self), 0);
        flat(d, -8.0 * d)
    }
    fn values(&self, _s: usize) -> [i8; 32] {
        let b = block_bytes(self);
        std::array::from_fn(|j| nibble(&b[2..], j) as i8)
    }
}

impl Weight for BlockQ4_1 {
    type Simd = imp::Q41;
    const UNSIGNED: bool = true;
    /// f16 scale and min, 16 bytes of nibbles.
    #[inline(always)]
    fn int_scales(&self) -> KScales {
        let b = block_bytes(self);
        flat(f16_at(b, 0), f16_at(b, 2))
    }
    fn values(&self, _s: usize) -> [i8; 32] {
        let b = block_bytes(self);
        std::array::from_fn(|j| nibble(&b[4..], j) as i8)
    }
}

impl Weight for BlockQ5_1 {
    type Simd = imp::Q51;
    const UNSIGNED: bool = true;
    /// f16 scale and min, u32 of fifth bits, 16 bytes of nibbles.
    #[inline(always)]
    fn int_scales(&self) -> KScales {
        let b = block_bytes(self);
        flat(f16_at(b, 0), f16_at(b, 2))
    }
    fn values(&self, _s: usize) -> [i8; 32] {
        let b = block_bytes(self);
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        std::array::from_fn(|j| (nibble(&b[8..], j) | ((((qh >> j) & 1) as u8) << 4)) as i8)
    }
}

impl Weight for BlockQ4K {
    type Simd = imp::Q4K;
    const UNSIGNED: bool = true;
    const K: bool = true;
    #[inline(always)]
    fn int_scales(&self) -> KScales {
        k_int_scales(block_bytes(self))
    }
    /// Nibbles from byte 16 on.
    fn values(&self, s: usize) -> [i8; 32] {
        let b = block_bytes(self);
        std::array::from_fn(|l| k_nibble(&b[16..], s, l) as i8)
    }
}

impl Weight for BlockQ5K {
    type Simd = imp::Q5K;
    const UNSIGNED: bool = true;
    const K: bool = true;
    #[inline(always)]
    fn int_scales(&self) -> KScales {
        k_int_scales(block_bytes(self))
    }
    /// 32 bytes of fifth bits from byte 16 (bit s of byte l: value l of
    /// sub-block s), nibbles from byte 48 on.
    fn values(&self, s: usize) -> [i8; 32] {
        let b = block_bytes(self);
        std::array::from_fn(|l| (k_nibble(&b[48..], s, l) | (((b[16 + l] >> s) & 1) << 4)) as i8)
    }
}

/// Two bits of value l of sub-block `s` of a Q2_K or Q3_K's 64 bytes of
/// crumbs: 128-value half s/4, bits 2·(s%4).
fn k_crumb(qs: &[u8], s: usize, l: usize) -> u8 {
    (qs[32 * (s / 4) + l] >> (2 * (s % 4))) & 3
}

impl Weight for BlockQ6K {
    type Simd = imp::Q6K;
    const UNSIGNED: bool = true;
    const K: bool = true;
    /// 128 bytes of low nibbles, 64 of high crumbs, 16 signed 8-bit scales
    /// from byte 192, f16 `d` at 208; a value is `d·sc·(q - 32)`.
    #[inline(always)]
    fn int_scales(&self) -> KScales {
        let b = block_bytes(self);
        let mut a = [0i16; 16];
        for (g, a) in a.iter_mut().enumerate() {
            *a = i16::from(b[192 + g] as i8);
        }
        let d = f16_at(b, 208);
        KScales { a, b: a, d, dm: -32.0 * d }
    }
    /// Sub-block s: nibbles of 64-byte chunk s/4 (its second 32 bytes for
    /// odd s%4, high nibbles for s%4 ≥ 2), two high bits from 32-byte chunk
    /// s/4 of `qh`, bits 2·(s%4).
    fn values(&self, s: usize) -> [i8; 32] {
        let b = block_bytes(self);
        let (n, j) = (s / 4, s % 4);
        std::array::from_fn(|l| (((b[64 * n + 32 * (j & 1) + l] >> (4 * (j >> 1))) & 0x0F) | (k_crumb(&b[128..], s, l) << 4)) as i8)
    }
}

impl Weight for BlockQ3K {
    type Simd = imp::Q3K;
    const UNSIGNED: bool = true;
    const K: bool = true;
    /// 32 bytes of high bits, 64 of crumbs, twelve bytes of 6-bit scales
    /// from byte 96, f16 `d` at 108; a value is `d·(sc - 32)·(q - 4)`.
    #[inline(always)]
    fn int_scales(&self) -> KScales {
        let b = block_bytes(self);
        let sc = &b[96..108];
        let a: [i16; 16] = std::array::from_fn(|g| {
            let low = if g < 8 { sc[g] & 0x0F } else { sc[g - 8] >> 4 };
            let high = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
            i16::from(low | (high << 4)) - 32
        });
        let d = f16_at(b, 108);
        KScales { a, b: a, d, dm: -4.0 * d }
    }
    /// Two bits from the crumbs, the third is bit s of `hmask[l]`.
    fn values(&self, s: usize) -> [i8; 32] {
        let b = block_bytes(self);
        std::array::from_fn(|l| (k_crumb(&b[32..], s, l) | (((b[l] >> s) & 1) << 2)) as i8)
    }
}

impl Weight for BlockQ2K {
    type Simd = imp::Q2K;
    const UNSIGNED: bool = true;
    const K: bool = true;
    /// 16 bytes of 4-bit scale and min, 64 of crumbs, f16 `d` and `dmin`
    /// at 80; a value is `d·(sc & 15)·q - dmin·(sc >> 4)`.
    #[inline(always)]
    fn int_scales(&self) -> KScales {
        let b = block_bytes(self);
        KScales { a: std::array::from_fn(|g| i16::from(b[g] & 0x0F)), b: std::array::from_fn(|g| i16::from(b[g] >> 4)), d: f16_at(b, 80), dm: -f16_at(b, 82) }
    }
    fn values(&self, s: usize) -> [i8; 32] {
        let b = block_bytes(self);
        std::array::from_fn(|l| k_crumb(&b[16..], s, l) as i8)
    }
}

/// The arithmetic every kernel here reproduces exactly: for blocks of 32,
/// per block, the integer dot product of its values (exact), then one fused
/// multiply-add of it times the product of the two scales into one f32 sum;
/// for unsigned types then one more of the activation block's sum times
/// min·scale.
///
/// Because every path (four rows from the file, eight-row tiles, VNNI or
/// not, the leftover rows) computes this same sequence of roundings, a row's
/// result does not depend on how many rows are multiplied together: a
/// sequence decoded alone and one decoded in a batch get identical logits.
///
/// [`Weight::K`] types instead meet Q8_K activations (here as Q8_0 blocks
/// with the superblock's scale `dk` beside them) and per superblock add
/// `Σ_g a_g·Σq·x · d·dx`, then `Σ_g b_g·Σx · dm·dx` (exact integer sums).
pub(crate) fn dot_ref<W: Weight>(w: &[W], x: &[BlockQ8_0], dk: &[f32]) -> f32 {
    if W::K {
        let mut acc = 0f32;
        for (blk, wb) in w.iter().enumerate() {
            let sc = wb.int_scales();
            let (mut isum, mut msum) = (0i32, 0i32);
            for s in 0..8 {
                let wv = wb.values(s);
                let xr = block_bytes(&x[blk * 8 + s]);
                for l in 0..32 {
                    let xv = i32::from(xr[2 + l] as i8);
                    isum += i32::from(sc.a[2 * s + l / 16]) * i32::from(wv[l]) * xv;
                    msum += i32::from(sc.b[2 * s + l / 16]) * xv;
                }
            }
            acc = (isum as f32).mul_add(sc.d * dk[blk], acc);
            acc = (msum as f32).mul_add(sc.dm * dk[blk], acc);
        }
        return acc;
    }
    let mut acc = 0f32;
    for (wb, xb) in w.iter().zip(x) {
        let (sc, wv) = (wb.int_scales(), wb.values(0));
        let xr = block_bytes(xb);
        let (xv, xs): ([i8; 32], f32) = (std::array::from_fn(|j| xr[2 + j] as i8), f16_at(xr, 0));
        let isum: i32 = wv.iter().zip(&xv).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
        acc = (isum as f32).mul_add(sc.d * xs, acc);
        if W::UNSIGNED {
            let xsum: i32 = xv.iter().map(|&v| i32::from(v)).sum();
            acc = (xsum as f32).mul_add(sc.dm * xs, acc);
        }
    }
    acc
}

/// The instructions the kernels use, picked at run time from what the CPU
/// has: one binary (built for x86-64-v3) runs the fastest path on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX2's `maddubs`/`madd` pairs (every x86-64-v3 CPU).
    Avx2,
    /// `vpdpbusd` in its VEX form (Intel since Alder Lake and Sapphire Rapids).
    AvxVnni,
    /// `vpdpbusd` and `vpdpwssd` in their EVEX forms, on 512-bit vectors
    /// where that pays (the prompt tile, the K-quant decode kernel) and
    /// 256-bit ones elsewhere (AVX512-VNNI with AVX512-VL and -BW: Intel
    /// since Ice Lake and Cascade Lake, AMD since Zen 4, which has no
    /// AVX-VNNI).
    Avx512Vnni,
}

impl Isa {
    /// The best this CPU runs (read once).
    pub(crate) fn best() -> Self {
        static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| Self::supported().pop().unwrap_or(Isa::Avx2))
    }

    /// Every one this CPU runs, best last (the tests check each against the
    /// scalar reference).
    pub(crate) fn supported() -> Vec<Self> {
        let mut isas = vec![Isa::Avx2];
        if imp::has_avx_vnni() {
            isas.push(Isa::AvxVnni);
        }
        if imp::has_avx512_vnni() {
            isas.push(Isa::Avx512Vnni);
        }
        isas
    }
}

/// Whether the kernels here multiply weights of this type.
pub(crate) fn covers(dtype: GgmlDType) -> bool {
    AVAILABLE
        && matches!(
            dtype,
            GgmlDType::Q8_0
                | GgmlDType::Q5_0
                | GgmlDType::Q4_0
                | GgmlDType::Q4_1
                | GgmlDType::Q5_1
                | GgmlDType::Q2K
                | GgmlDType::Q3K
                | GgmlDType::Q4K
                | GgmlDType::Q5K
                | GgmlDType::Q6K
        )
}

/// `x · wᵀ` for a CPU weight of a type the kernels cover ([`covers`]), as
/// a candle op on the activations `x` (…, k) giving (…, n).
#[derive(Debug, Clone)]
pub(crate) struct QuantMatmul(pub(crate) std::sync::Arc<QTensor>);

impl candle_core::CustomOp1 for QuantMatmul {
    fn name(&self) -> &'static str {
        "rbee-quant-matmul"
    }

    fn cpu_fwd(&self, storage: &candle_core::CpuStorage, layout: &candle_core::Layout) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        fn run<W: Weight>(m: usize, k: usize, n: usize, lhs: &[f32], data: &[u8], dst: &mut [f32]) -> candle_core::Result<()> {
            if !k.is_multiple_of(W::BLCK_SIZE) || data.len() != n * (k / W::BLCK_SIZE) * std::mem::size_of::<W>() {
                candle_core::bail!("a {n}x{k} weight of {:?} has {} bytes", W::DTYPE, data.len())
            }
            with_elements::<W>(data, |blocks| matmul(m, k, n, lhs, blocks, dst));
            Ok(())
        }
        weight_op(&self.0, storage, layout, |m, k, n, lhs, data, dst| match self.0.dtype() {
            GgmlDType::Q8_0 => run::<BlockQ8_0>(m, k, n, lhs, data, dst),
            GgmlDType::Q5_0 => run::<BlockQ5_0>(m, k, n, lhs, data, dst),
            GgmlDType::Q4_0 => run::<BlockQ4_0>(m, k, n, lhs, data, dst),
            GgmlDType::Q4_1 => run::<BlockQ4_1>(m, k, n, lhs, data, dst),
            GgmlDType::Q5_1 => run::<BlockQ5_1>(m, k, n, lhs, data, dst),
            GgmlDType::Q4K => run::<BlockQ4K>(m, k, n, lhs, data, dst),
            GgmlDType::Q5K => run::<BlockQ5K>(m, k, n, lhs, data, dst),
            GgmlDType::Q6K => run::<BlockQ6K>(m, k, n, lhs, data, dst),
            GgmlDType::Q3K => run::<BlockQ3K>(m, k, n, lhs, data, dst),
            GgmlDType::Q2K => run::<BlockQ2K>(m, k, n, lhs, data, dst),
            other => candle_core::bail!("rbee's kernels do not multiply {other:?}"),
        })
    }
}

/// The part every weight matmul op shares: checks that the activations are
/// contiguous f32 rows of the `n×k` weight's `k`, runs `mul(m, k, n, lhs,
/// weight bytes, dst)` and gives the result its shape (…, n).
pub(crate) fn weight_op(
    weight: &QTensor,
    storage: &candle_core::CpuStorage,
    layout: &candle_core::Layout,
    mul: impl FnOnce(usize, usize, usize, &[f32], &[u8], &mut [f32]) -> candle_core::Result<()>,
) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
    let (candle_core::CpuStorage::F32(v), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
        candle_core::bail!("a weight matmul takes contiguous f32 activations")
    };
    let (n, k) = weight.shape().dims2()?;
    let mut dims = layout.dims().to_vec();
    if dims.last() != Some(&k) {
        candle_core::bail!("activations {dims:?} do not match a weight of {n}x{k}")
    }
    *dims.last_mut().expect("checked above") = n;
    let lhs = &v[start..end];
    let m = lhs.len() / k;
    let mut dst = vec![0f32; m * n];
    mul(m, k, n, lhs, &weight.data()?, &mut dst)?;
    Ok((candle_core::CpuStorage::F32(dst), candle_core::Shape::from(dims)))
}

/// `data` (a weight's bytes, whose length the caller checked is a whole
/// number of `T`) as a slice of `T`: in place where the map aligns it, else
/// copied.
pub(crate) fn with_elements<T: candle_core::quantized::GgmlType>(data: &[u8], f: impl FnOnce(&[T])) {
    if (data.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
        // SAFETY: aligned, a whole number of `T` (checked by the caller), and
        // `T` is plain old data (quant blocks and floats: any bit pattern is valid).
        f(unsafe { std::slice::from_raw_parts(data.as_ptr() as *const T, data.len() / std::mem::size_of::<T>()) });
    } else {
        f(&crate::gguf::blocks_from_bytes::<T>(data));
    }
}

/// `dst (m×n) = lhs (m×k) · rhs (n×k)ᵀ`.
///
/// # Panics
/// On mismatched lengths (the callers check them).
pub(crate) fn matmul<W: Weight>(m: usize, k: usize, n: usize, lhs: &[f32], rhs: &[W], dst: &mut [f32]) {
    matmul_with(Isa::best(), m, k, n, lhs, rhs, dst);
}

/// Up to this many activation rows are multiplied straight from the weights
/// (decoding a batch of sequences); more use the unpacked tile (a prompt).
const DECODE_ROWS: usize = 8;

/// [`matmul`] with the given instructions (`isa` only one this CPU runs).
fn matmul_with<W: Weight>(isa: Isa, m: usize, k: usize, n: usize, lhs: &[f32], rhs: &[W], dst: &mut [f32]) {
    assert!(AVAILABLE && k.is_multiple_of(W::BLCK_SIZE) && lhs.len() == m * k && rhs.len() == n * (k / W::BLCK_SIZE) && dst.len() >= m * n);
    // kb activation blocks (and weight sub-blocks) per row, nb weight blocks.
    let (kb, nb) = (k / 32, k / W::BLCK_SIZE);
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    let mut xq: Vec<BlockQ8_0> = (0..m * kb).map(|_| BlockQ8_0::zeros()).collect();
    // K-quants: each superblock's Q8_K scale (the blocks in xq then carry
    // its values, 32 at a time).
    let mut dk = vec![0f32; if W::K { m * nb } else { 0 }];
    let quantize = |r: usize, row: &mut [BlockQ8_0], dk: &mut [f32]| {
        if W::K {
            quantize_q8k(&lhs[r * k..(r + 1) * k], row, dk);
        } else {
            BlockQ8_0::from_float(&lhs[r * k..(r + 1) * k], row);
        }
    };
    if m < threads {
        for r in 0..m {
            let dk = if W::K { &mut dk[r * nb..(r + 1) * nb] } else { &mut [][..] };
            quantize(r, &mut xq[r * kb..(r + 1) * kb], dk);
        }
    } else {
        // A prompt's activation rows are quantized on every thread.
        let per = m.div_ceil(threads);
        let (xq_addr, dk_addr) = (xq.as_mut_ptr() as usize, dk.as_mut_ptr() as usize);
        pool.execute(|t| {
            for r in (t * per).min(m)..((t + 1) * per).min(m) {
                // SAFETY: row r's kb blocks and nb scales are written by this
                // thread only.
                let row = unsafe { std::slice::from_raw_parts_mut((xq_addr as *mut BlockQ8_0).add(r * kb), kb) };
                let dk = if W::K { unsafe { std::slice::from_raw_parts_mut((dk_addr as *mut f32).add(r * nb), nb) } } else { &mut [][..] };
                quantize(r, row, dk);
            }
        });
    }
    let dk = &dk;
    // The sums of each activation block's two halves of 16 values: they
    // carry the mins of unsigned types, and undo the VNNI kernels' offset of
    // signed ones.
    let xsum: Vec<[i32; 2]> = xq.iter().map(half_sums).collect();
    let xsum = &xsum;
    let dst_addr = dst.as_mut_ptr() as usize;
    // A prompt (many activation rows) unpacks eight weight rows (sixteen with AVX-512) into a tile
    // that every activation row then meets. Decoding (one row, or a batch of
    // a few sequences), where reading the weights is the cost, takes four
    // weight rows at a time straight from the file, each block unpacked once
    // for up to four activation rows. Weight rows left over go one by one.
    let group = if m > DECODE_ROWS { imp::Tile::rows(isa) } else { 4 };
    let groups = n / group;
    let per = groups.div_ceil(threads);
    let xq = &xq;
    pool.execute(|t| {
        let (g0, g1) = ((t * per).min(groups), ((t + 1) * per).min(groups));
        let mut tile = if m > DECODE_ROWS && g1 > g0 { Some(imp::Tile::new(kb, isa)) } else { None };
        let dst = |r: usize, col: usize, out: &[f32]| {
            // SAFETY: each (row, column) of dst is written by exactly one
            // thread: threads own disjoint column ranges.
            unsafe { std::ptr::copy_nonoverlapping(out.as_ptr(), (dst_addr as *mut f32).add(r * n + col), out.len()) };
        };
        let x = |r: usize| xq[r * kb..(r + 1) * kb].as_ptr();
        let s = |r: usize| xsum[r * kb..(r + 1) * kb].as_ptr();
        let d = |r: usize| if W::K { dk[r * nb..].as_ptr() } else { std::ptr::null() };
        for g in g0..g1 {
            let col = g * group;
            let w = rhs[col * nb..].as_ptr();
            // SAFETY (kernel calls): they read `group` weight rows of nb
            // blocks from `col`, inside `rhs` (checked above), and kb blocks
            // and kb sums of each activation row; `isa` runs here.
            if let Some(tile) = &mut tile {
                unsafe { tile.fill::<W>(w, nb) };
                let mut r = 0;
                while r + 4 <= m {
                    let rows = [r, r + 1, r + 2, r + 3];
                    let out = unsafe { tile.dot4(rows.map(x), rows.map(s), rows.map(d)) };
                    for (i, out) in out.iter().enumerate() {
                        dst(r + i, col, &out[..group]);
                    }
                    r += 4;
                }
                for r in r..m {
                    dst(r, col, &unsafe { tile.dot(x(r), s(r), d(r)) }[..group]);
                }
                continue;
            }
            let mut r = 0;
            while r < m {
                match m - r {
                    1 => unsafe { imp::dot4::<W, 1>(isa, w, nb, kb, [x(r)], [s(r)], [d(r)]) }.iter().for_each(|o| dst(r, col, o)),
                    2 => unsafe { imp::dot4::<W, 2>(isa, w, nb, kb, [x(r), x(r + 1)], [s(r), s(r + 1)], [d(r), d(r + 1)]) }
                        .iter()
                        .enumerate()
                        .for_each(|(i, o)| dst(r + i, col, o)),
                    3 => unsafe { imp::dot4::<W, 3>(isa, w, nb, kb, [x(r), x(r + 1), x(r + 2)], [s(r), s(r + 1), s(r + 2)], [d(r), d(r + 1), d(r + 2)]) }
                        .iter()
                        .enumerate()
                        .for_each(|(i, o)| dst(r + i, col, o)),
                    _ => unsafe {
                        imp::dot4::<W, 4>(
                            isa,
                            w,
                            nb,
                            kb,
                            [x(r), x(r + 1), x(r + 2), x(r + 3)],
                            [s(r), s(r + 1), s(r + 2), s(r + 3)],
                            [d(r), d(r + 1), d(r + 2), d(r + 3)],
                        )
                    }
                    .iter()
                    .enumerate()
                    .for_each(|(i, o)| dst(r + i, col, o)),
                }
                r += 4;
            }
        }
        // The rows that do not fill a group, on the last thread.
        if t == threads - 1 {
            for c in groups * group..n {
                for r in 0..m {
                    let v = dot_ref(&rhs[c * nb..(c + 1) * nb], &xq[r * kb..(r + 1) * kb], if W::K { &dk[r * nb..(r + 1) * nb] } else { &[] });
                    // SAFETY: as above; no other thread owns these columns.
                    unsafe { *(dst_addr as *mut f32).add(r * n + c) = v };
                }
            }
        }
    });
}

/// One activation row as Q8_K (candle's arithmetic: one scale per 256
/// values), written as eight Q8_0 blocks of values per superblock (their own
/// scales unused) and the superblocks' scales.
fn quantize_q8k(row: &[f32], xq: &mut [BlockQ8_0], dk: &mut [f32]) {
    for (blk, d) in dk.iter_mut().enumerate() {
        // SAFETY: AVX2 runs here (matmul asserts AVAILABLE).
        *d = unsafe { imp::quantize_q8k(&row[blk * 256..(blk + 1) * 256], &mut xq[blk * 8..(blk + 1) * 8]) };
    }
}

/// [`quantize_q8k`] through candle's scalar `BlockQ8K::from_float`, which
/// the vectorized one reproduces exactly (the tests compare them).
#[cfg(test)]
fn quantize_q8k_ref(row: &[f32], xq: &mut [BlockQ8_0], dk: &mut [f32]) {
    use candle_core::quantized::k_quants::BlockQ8K;
    let mut sb = [BlockQ8K::zeros()];
    for (blk, d) in dk.iter_mut().enumerate() {
        BlockQ8K::from_float(&row[blk * 256..(blk + 1) * 256], &mut sb);
        // Q8_K: f32 d, then 256 values.
        let bytes = block_bytes(&sb[0]);
        *d = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        for (s, b) in xq[blk * 8..(blk + 1) * 8].iter_mut().enumerate() {
            // SAFETY: a Q8_0 block is an f16 and 32 bytes, plain old data.
            let out = unsafe { std::slice::from_raw_parts_mut(b as *mut BlockQ8_0 as *mut u8, std::mem::size_of::<BlockQ8_0>()) };
            out[2..].copy_from_slice(&bytes[4 + 32 * s..4 + 32 * (s + 1)]);
        }
    }
}

/// The sums of a Q8_0 block's values 0..16 and 16..32.
fn half_sums(b: &BlockQ8_0) -> [i32; 2] {
    let q = &block_bytes(b)[2..];
    let sum = |h: &[u8]| h.iter().map(|&q| i32::from(q as i8)).sum();
    [sum(&q[..16]), sum(&q[16..])]
}

/// GELU with the tanh approximation (Gemma's activation), vectorized.
///
/// candle evaluates it with the C library's `tanhf` per element, which took
/// 12 % of prompt processing on the fixture. Here `0.5·v·(1 + tanh(u))` is
/// computed as the equal `v / (1 + e^(-2u))` with an AVX2 exponential
/// (range reduction by ln 2, degree-6 polynomial: relative error ~1e-7).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GeluTanh;

impl candle_core::CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "gelu-tanh"
    }

    fn cpu_fwd(&self, storage: &candle_core::CpuStorage, layout: &candle_core::Layout) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (candle_core::CpuStorage::F32(v), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("gelu-tanh takes a contiguous f32 tensor")
        };
        let mut out = v[start..end].to_vec();
        gelu_tanh(&mut out);
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// GELU (tanh approximation) of every value, in place.
pub(crate) fn gelu_tanh(xs: &mut [f32]) {
    let split = if AVAILABLE { xs.len() / 8 * 8 } else { 0 };
    let (body, tail) = xs.split_at_mut(split);
    // SAFETY: AVX2 is available whenever `body` is not empty.
    unsafe { imp::gelu8(body) };
    for v in tail {
        let u = GELU_C * *v * (1.0 + 0.044715 * *v * *v);
        *v = 0.5 * *v * (1.0 + u.tanh());
    }
}

/// √(2/π).
const GELU_C: f32 = 0.797_884_6;

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod imp {
    use std::arch::x86_64::*;

    use candle_core::quantized::k_quants::BlockQ8_0;

    use candle_core::quantized::GgmlDType;

    use super::{Isa, Weight, f16_at, k_scales_mins_6bit, subs};

    /// How sub-block `s` of a block becomes 32 bytes in a vector: signed
    /// values, or unsigned ones for [`Weight::UNSIGNED`] types.
    pub(crate) trait Unpack {
        /// # Safety
        /// `p` points at one block; `s` is one of its sub-blocks; AVX2 is
        /// enabled.
        unsafe fn values(p: *const u8, s: usize) -> __m256i;
    }

    pub(crate) struct Q8;
    pub(crate) struct Q5;
    pub(crate) struct Q40;
    pub(crate) struct Q41;
    pub(crate) struct Q51;
    pub(crate) struct Q4K;
    pub(crate) struct Q5K;
    pub(crate) struct Q6K;
    pub(crate) struct Q3K;
    pub(crate) struct Q2K;

    /// 16 bytes of nibbles at `p`: low nibbles to bytes 0..16, high to 16..32.
    #[inline(always)]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        // SAFETY: the caller's block holds 16 bytes at p.
        unsafe {
            let qs = _mm_loadu_si128(p as *const __m128i);
            _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(qs), _mm_srli_epi16(qs, 4), 1), _mm256_set1_epi8(0x0F))
        }
    }

    /// 0xFF in byte j where bit j of `qh` is set.
    #[inline(always)]
    unsafe fn bit_bytes(qh: u32) -> __m256i {
        // SAFETY: register-only AVX2.
        unsafe {
            // Spread qh's byte j/8 to byte j, then test bit j%8.
            let spread = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
            _mm256_cmpeq_epi8(_mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe)), _mm256_set1_epi8(-1))
        }
    }

    /// The nibbles of sub-block `s` of a K-quant's 128 nibble bytes at `qs`.
    #[inline(always)]
    unsafe fn k_nibbles(qs: *const u8, s: usize) -> __m256i {
        // SAFETY: 32 bytes at qs + 32·(s/2) lie in the block.
        unsafe {
            let v = _mm256_loadu_si256(qs.add(32 * (s / 2)) as *const __m256i);
            _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(4 * (s % 2) as i32)), _mm256_set1_epi8(0x0F))
        }
    }

    impl Unpack for Q8 {
        #[inline(always)]
        unsafe fn values(p: *const u8, _s: usize) -> __m256i {
            // SAFETY: 32 value bytes follow the 2-byte scale.
            unsafe { _mm256_loadu_si256(p.add(2) as *const __m256i) }
        }
    }

    impl Unpack for Q5 {
        /// f16 d, u32 qh, 16 bytes of nibbles; value = five bits - 16.
        #[inline(always)]
        unsafe fn values(p: *const u8, _s: usize) -> __m256i {
            // SAFETY: the block is 22 bytes: 2 + 4 + 16.
            unsafe {
                let bits = bit_bytes(std::ptr::read_unaligned(p.add(2) as *const u32));
                // With the bit set the value is the nibble; without it,
                // nibble - 16 = nibble | 0xF0 as a byte.
                _mm256_or_si256(nibbles(p.add(6)), _mm256_andnot_si256(bits, _mm256_set1_epi8(0xF0u8 as i8)))
            }
        }
    }

    impl Unpack for Q40 {
        #[inline(always)]
        unsafe fn values(p: *const u8, _s: usize) -> __m256i {
            // SAFETY: f16 d, then 16 bytes of nibbles.
            unsafe { nibbles(p.add(2)) }
        }
    }

    impl Unpack for Q41 {
        #[inline(always)]
        unsafe fn values(p: *const u8, _s: usize) -> __m256i {
            // SAFETY: f16 d and m, then 16 bytes of nibbles.
            unsafe { nibbles(p.add(4)) }
        }
    }

    impl Unpack for Q51 {
        #[inline(always)]
        unsafe fn values(p: *const u8, _s: usize) -> __m256i {
            // SAFETY: f16 d and m, u32 qh, 16 bytes of nibbles.
            unsafe {
                let bits = bit_bytes(std::ptr::read_unaligned(p.add(4) as *const u32));
                _mm256_or_si256(nibbles(p.add(8)), _mm256_and_si256(bits, _mm256_set1_epi8(0x10)))
            }
        }
    }

    impl Unpack for Q4K {
        #[inline(always)]
        unsafe fn values(p: *const u8, s: usize) -> __m256i {
            // SAFETY: 144 bytes: d, dmin, 12 bytes of scales, 128 of nibbles.
            unsafe { k_nibbles(p.add(16), s) }
        }
    }

    impl Unpack for Q5K {
        #[inline(always)]
        unsafe fn values(p: *const u8, s: usize) -> __m256i {
            // SAFETY: 176 bytes: d, dmin, 12 bytes of scales, 32 of fifth
            // bits, 128 of nibbles.
            unsafe {
                let qh = _mm256_loadu_si256(p.add(16) as *const __m256i);
                // Bit s of each byte, moved to bit 4 (16-bit shifts keep
                // each byte's bit in its byte once masked).
                let high = _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(s as i32)), _mm256_set1_epi8(1)), 4);
                _mm256_or_si256(k_nibbles(p.add(48), s), high)
            }
        }
    }

    /// Bits `2·(s%4)` and up of the 32 bytes at `p` (two, masked by `mask`).
    #[inline(always)]
    unsafe fn crumbs(p: *const u8, s: usize) -> __m256i {
        // SAFETY: the caller's block holds 32 bytes at p.
        unsafe { _mm256_and_si256(_mm256_srl_epi16(_mm256_loadu_si256(p as *const __m256i), _mm_cvtsi32_si128(2 * (s % 4) as i32)), _mm256_set1_epi8(3)) }
    }

    impl Unpack for Q6K {
        #[inline(always)]
        unsafe fn values(p: *const u8, s: usize) -> __m256i {
            // SAFETY: 210 bytes: 128 of nibbles, 64 of crumbs, scales, d.
            unsafe {
                let (n, j) = (s / 4, s % 4);
                let lo = _mm256_loadu_si256(p.add(64 * n + 32 * (j & 1)) as *const __m256i);
                let lo = _mm256_and_si256(_mm256_srl_epi16(lo, _mm_cvtsi32_si128(4 * (j >> 1) as i32)), _mm256_set1_epi8(0x0F));
                _mm256_or_si256(lo, _mm256_slli_epi16(crumbs(p.add(128 + 32 * n), s), 4))
            }
        }
    }

    impl Unpack for Q3K {
        #[inline(always)]
        unsafe fn values(p: *const u8, s: usize) -> __m256i {
            // SAFETY: 110 bytes: 32 of high bits, 64 of crumbs, scales, d.
            unsafe {
                let hm = _mm256_loadu_si256(p as *const __m256i);
                let high = _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128(s as i32)), _mm256_set1_epi8(1)), 2);
                _mm256_or_si256(crumbs(p.add(32 + 32 * (s / 4)), s), high)
            }
        }
    }

    impl Unpack for Q2K {
        #[inline(always)]
        unsafe fn values(p: *const u8, s: usize) -> __m256i {
            // SAFETY: 84 bytes: 16 of scales, 64 of crumbs, d, dmin.
            unsafe { crumbs(p.add(16 + 32 * (s / 4)), s) }
        }
    }

    /// 256 activations as Q8_K, exactly as candle's `BlockQ8K::from_float`
    /// (the scale from the value of largest magnitude, the first on ties;
    /// products rounded half away from zero; NaN to 0), eight at a time:
    /// the values into the eight Q8_0 blocks `out`, the scale returned.
    ///
    /// # Safety
    /// AVX2 is enabled (this module is compiled only then).
    pub(super) unsafe fn quantize_q8k(x: &[f32], out: &mut [BlockQ8_0]) -> f32 {
        assert!(x.len() == 256 && out.len() == 8);
        // SAFETY: the loads read x's 256 values, the stores 32 bytes after
        // each block's 2-byte scale.
        unsafe {
            let p = x.as_ptr();
            let sign = _mm256_set1_ps(-0.0);
            let abs = |i: usize| _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * i)));
            // NaN is passed over (max_ps returns its second operand).
            let mut m = abs(0);
            for i in 1..32 {
                m = _mm256_max_ps(abs(i), m);
            }
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<1>(m, m)));
            if amax == 0.0 {
                for b in out.iter_mut() {
                    std::ptr::write_bytes((b as *mut BlockQ8_0 as *mut u8).add(2), 0, 32);
                }
                return 0.0;
            }
            let target = _mm256_set1_ps(amax);
            let first = (0..32)
                .find_map(|i| {
                    let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(abs(i), target));
                    (hit != 0).then(|| 8 * i + hit.trailing_zeros() as usize)
                })
                .expect("amax is one of the magnitudes");
            let iscale = -127.0 / x[first];
            let scale = _mm256_set1_ps(iscale);
            let (half, one, lo, hi) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0), _mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
            let q = |i: usize| {
                let v = _mm256_mul_ps(scale, _mm256_loadu_ps(p.add(8 * i)));
                // Half away from zero: truncate, then one step outwards
                // where the part cut off was at least a half (exact).
                let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
                let up = _mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_andnot_ps(sign, _mm256_sub_ps(v, t)), half);
                let r = _mm256_add_ps(t, _mm256_and_ps(up, _mm256_or_ps(_mm256_and_ps(v, sign), one)));
                let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v));
                _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi))
            };
            for (b, blk) in out.iter_mut().enumerate() {
                let i = 4 * b;
                let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q(i), q(i + 1)), _mm256_packs_epi32(q(i + 2), q(i + 3)));
                let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
                _mm256_storeu_si256((blk as *mut BlockQ8_0 as *mut u8).add(2) as *mut __m256i, bytes);
            }
            1.0 / iscale
        }
    }

    /// Whether the CPU has AVX-VNNI.
    pub(super) fn has_avx_vnni() -> bool {
        is_x86_feature_detected!("avxvnni")
    }

    /// Whether the CPU has AVX512-VNNI, with the VL and BW extensions the
    /// kernels use beside it.
    pub(super) fn has_avx512_vnni() -> bool {
        is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") && is_x86_feature_detected!("avx512bw")
    }

    /// A sum of four-byte products per dword: `vpdpbusd` in one of its two
    /// encodings, or AVX2's `maddubs` and `madd`.
    pub(super) trait Dp {
        /// Whether signed weights are offset by 128 (`vpdpbusd` takes
        /// unsigned bytes) rather than multiplied by sign.
        const OFFSET: bool;
        /// Each dword of `acc` plus the four products of unsigned bytes `u` with signed
        /// bytes `s` (exact for the ranges here: |u| ≤ 255 with VNNI, u ≤ 127
        /// or ≤ 31 with AVX2).
        ///
        /// # Safety
        /// The instruction's feature is enabled in the caller.
        unsafe fn dp(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;

        /// Each dword of `acc` plus the two products of its pair of 16-bit
        /// values in `a` and `b` (`vpdpwssd`, or `madd` and an add).
        ///
        /// # Safety
        /// As [`Dp::dp`].
        unsafe fn dpw(acc: __m256i, a: __m256i, b: __m256i) -> __m256i;
    }

    pub(super) struct VexDp;
    pub(super) struct EvexDp;
    pub(super) struct Avx2Dp;

    impl Dp for VexDp {
        const OFFSET: bool = true;
        #[inline(always)]
        unsafe fn dp(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            // SAFETY: the caller enables avxvnni.
            unsafe { _mm256_dpbusd_avx_epi32(acc, u, s) }
        }
        #[inline(always)]
        unsafe fn dpw(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
            // SAFETY: the caller enables avxvnni.
            unsafe { _mm256_dpwssd_avx_epi32(acc, a, b) }
        }
    }

    impl Dp for EvexDp {
        const OFFSET: bool = true;
        #[inline(always)]
        unsafe fn dp(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            // SAFETY: the caller enables avx512vnni and avx512vl.
            unsafe { _mm256_dpbusd_epi32(acc, u, s) }
        }
        #[inline(always)]
        unsafe fn dpw(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
            // SAFETY: the caller enables avx512vnni and avx512vl.
            unsafe { _mm256_dpwssd_epi32(acc, a, b) }
        }
    }

    impl Dp for Avx2Dp {
        const OFFSET: bool = false;
        #[inline(always)]
        unsafe fn dp(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            // SAFETY: AVX2 is enabled for this build.
            unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))) }
        }
        #[inline(always)]
        unsafe fn dpw(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
            // SAFETY: AVX2 is enabled for this build.
            unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)) }
        }
    }

    /// Eight weight rows (sixteen with AVX512-VNNI) of kb sub-blocks,
    /// unpacked so that one activation block meets all of them with no
    /// unpacking and their sums come out in one vector; with the scales and
    /// mins as f32 (`scale[b·rows + r]`).
    ///
    /// Two layouts. With VNNI, `inter` holds per sub-block eight vectors,
    /// vector j carrying bytes 4j..4j+4 of row r in lane r, as unsigned
    /// bytes (signed values offset by 128): `vpdpbusd` with the activation's
    /// dword j broadcast then adds four products per row into that row's
    /// lane, and no horizontal sums are needed; with AVX-512 a vector holds
    /// sixteen rows, so each instruction does twice the work. Otherwise
    /// `val` holds each row's values (their absolute values when signed,
    /// with `sign` their signs) for AVX2's `maddubs`/`madd` pairs, summed
    /// across lanes per block.
    pub(crate) struct Tile {
        kb: usize,
        isa: Isa,
        rows: usize,
        unsigned: bool,
        inter: Vec<u32>,
        val: Vec<__m256i>,
        sign: Vec<__m256i>,
        scale: Vec<f32>,
        min: Vec<f32>,
        /// K-quants ([`Weight::K`]): integer scales per half sub-block
        /// (`ia[(b·2 + h)·rows + r]`), mins per pair of groups of 16 as two
        /// 16-bit halves of a dword (`ib[(blk·8 + p)·rows + r]`, for
        /// `vpdpwssd` against the pair's activation sums), and per
        /// superblock the float factors (`[blk·rows + r]`).
        k: bool,
        ia: Vec<i32>,
        ib: Vec<i32>,
        kd: Vec<f32>,
        kdm: Vec<f32>,
    }

    impl Tile {
        /// The rows a tile holds with these instructions.
        pub(super) fn rows(isa: Isa) -> usize {
            if isa == Isa::Avx512Vnni { 16 } else { 8 }
        }

        /// `isa` only one this CPU runs.
        pub(super) fn new(kb: usize, isa: Isa) -> Self {
            // SAFETY: AVX is enabled for this build.
            let zero = unsafe { _mm256_setzero_si256() };
            let rows = Self::rows(isa);
            let (inter, val, sign) =
                if isa != Isa::Avx2 { (vec![0; 8 * kb * rows], Vec::new(), Vec::new()) } else { (Vec::new(), vec![zero; 8 * kb], vec![zero; 8 * kb]) };
            let (scale, min) = (vec![0.0; kb * rows], vec![0.0; kb * rows]);
            let (ia, ib, kd, kdm) = (vec![0; 2 * kb * rows], vec![0; kb * rows], vec![0.0; kb.div_ceil(8) * rows], vec![0.0; kb.div_ceil(8) * rows]);
            Self { kb, isa, rows, unsigned: false, inter, val, sign, scale, min, k: false, ia, ib, kd, kdm }
        }

        /// # Safety
        /// `w` points at [`Tile::rows`] rows of `nb` blocks, nb·subs = the
        /// tile's kb.
        pub(super) unsafe fn fill<W: Weight>(&mut self, w: *const W, nb: usize) {
            let (kb, rows) = (self.kb, self.rows);
            let vnni = self.isa != Isa::Avx2;
            self.unsigned = W::UNSIGNED;
            self.k = W::K;
            let inter = self.inter.as_mut_ptr();
            // K-quants: each row's integer scales of its current superblock.
            let mut ka = [[0i16; 16]; 16];
            let mut kb16 = [0i16; 16];
            // SAFETY: block (r, b/subs) is in bounds per the contract;
            // `inter` holds 8·kb vectors of `rows` dwords with VNNI, `val`
            // and `sign` 8·kb vectors, the scale vectors their sizes (new).
            unsafe {
                let blk = |r: usize, b: usize| w.add(r * nb + b / subs::<W>());
                let values = |r: usize, b: usize| W::Simd::values(blk(r, b) as *const u8, b % subs::<W>());
                let flip = if W::UNSIGNED { _mm256_setzero_si256() } else { _mm256_set1_epi8(0x80u8 as i8) };
                for b in 0..kb {
                    if b % subs::<W>() == 0 {
                        // Sixteen rows are sixteen streams, more than the
                        // hardware prefetcher follows well: with few
                        // activation rows (a chat's next turn) filling the
                        // tile waited on these loads. Each row's lines a
                        // few blocks ahead.
                        for r in 0..rows {
                            let p = blk(r, b) as *const i8;
                            for l in 0..std::mem::size_of::<W>().div_ceil(64) {
                                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(FILL_AHEAD + 64 * l));
                            }
                        }
                    }
                    if vnni {
                        // Eight rows at a time, their eight dwords
                        // transposed so that vector j holds dword j of each.
                        for g in 0..rows / 8 {
                            let t = transpose8(std::array::from_fn(|i| _mm256_xor_si256(values(8 * g + i, b), flip)));
                            for (j, t) in t.into_iter().enumerate() {
                                _mm256_storeu_si256(inter.add((b * 8 + j) * rows + 8 * g) as *mut __m256i, t);
                            }
                        }
                    } else {
                        for r in 0..rows {
                            let (i, v) = (b * 8 + r, values(r, b));
                            if W::UNSIGNED {
                                self.val[i] = v;
                            } else {
                                self.val[i] = _mm256_sign_epi8(v, v);
                                self.sign[i] = v;
                            }
                        }
                    }
                    let s = b % subs::<W>();
                    for (r, ka) in ka.iter_mut().enumerate().take(rows) {
                        if !W::K {
                            let ks = (*blk(r, b)).int_scales();
                            (self.scale[b * rows + r], self.min[b * rows + r]) = (ks.d, ks.dm);
                            continue;
                        }
                        if s == 0 {
                            let ks = k_scales(blk(r, b));
                            let sb = b / 8;
                            (self.kd[sb * rows + r], self.kdm[sb * rows + r]) = (ks.d, ks.dm);
                            _mm256_storeu_si256(ka.as_mut_ptr() as *mut __m256i, ks.a);
                            _mm256_storeu_si256(kb16.as_mut_ptr() as *mut __m256i, ks.b);
                            for (p, m) in kb16.chunks_exact(2).enumerate() {
                                self.ib[(sb * 8 + p) * rows + r] = pair16([m[0].into(), m[1].into()]);
                            }
                        }
                        for h in 0..2 {
                            self.ia[(b * 2 + h) * rows + r] = ka[2 * s + h].into();
                        }
                    }
                }
            }
        }

        /// The tile's rows' dot products with the kb Q8_0 blocks at `x`,
        /// whose sums of values are at `xsum` (the first [`Tile::rows`]
        /// values).
        ///
        /// # Safety
        /// `x` points at kb blocks and `xsum` at kb sums.
        pub(super) unsafe fn dot(&self, x: *const BlockQ8_0, xsum: *const [i32; 2], dk: *const f32) -> [f32; 16] {
            let mut out = [0f32; 16];
            // SAFETY: `isa` runs on this CPU (Tile::new); forwarded contract.
            unsafe {
                match self.isa {
                    Isa::Avx2 => out[..8].copy_from_slice(&self.dot8_avx2(x, xsum, dk)),
                    Isa::AvxVnni => out[..8].copy_from_slice(&self.dot8_avx_vnni(x, xsum, dk)),
                    Isa::Avx512Vnni => [out] = self.dot16_avx512_vnni::<1>([x], [xsum], [dk]),
                }
            }
            out
        }

        /// [`Tile::dot`] of four activation rows; with AVX512-VNNI in one
        /// pass over the tile.
        ///
        /// # Safety
        /// As [`Tile::dot`], for each row.
        pub(super) unsafe fn dot4(&self, x: [*const BlockQ8_0; 4], xsum: [*const [i32; 2]; 4], dk: [*const f32; 4]) -> [[f32; 16]; 4] {
            // SAFETY: `isa` runs on this CPU (Tile::new); forwarded contract.
            unsafe {
                if self.isa == Isa::Avx512Vnni {
                    return self.dot16_avx512_vnni::<4>(x, xsum, dk);
                }
                [self.dot(x[0], xsum[0], dk[0]), self.dot(x[1], xsum[1], dk[1]), self.dot(x[2], xsum[2], dk[2]), self.dot(x[3], xsum[3], dk[3])]
            }
        }

        #[target_feature(enable = "avxvnni")]
        unsafe fn dot8_avx_vnni(&self, x: *const BlockQ8_0, xsum: *const [i32; 2], dk: *const f32) -> [f32; 8] {
            // SAFETY: forwarded contract; the feature is enabled here.
            unsafe { self.dot8_vnni::<VexDp>(x, xsum, dk) }
        }

        /// [`Tile::dot8_vnni`] on 512-bit vectors, sixteen rows per
        /// instruction, for A activation rows at once: each sub-block's
        /// eight weight vectors are loaded once for all of them, and their
        /// chains are independent.
        #[target_feature(enable = "avx512f,avx512vnni")]
        unsafe fn dot16_avx512_vnni<const A: usize>(&self, x: [*const BlockQ8_0; A], xsum: [*const [i32; 2]; A], dk: [*const f32; A]) -> [[f32; 16]; A] {
            let bs = std::mem::size_of::<BlockQ8_0>();
            // SAFETY: each x holds kb blocks, each xsum kb sums and each dk
            // kb/8 scales; the tile holds 8·kb vectors of 16 dwords, 16·kb
            // scales and mins, and its K-quant scales.
            unsafe {
                let mut acc = [_mm512_setzero_ps(); A];
                let mut iacc = [_mm512_setzero_si512(); A];
                let w = self.inter.as_ptr();
                let offset = if self.unsigned { 0 } else { 128 };
                let at = |v: &Vec<i32>, i: usize| _mm512_loadu_si512(v.as_ptr().add(i * 16) as *const __m512i);
                let mut wv = [_mm512_setzero_si512(); 8];
                for b in 0..self.kb {
                    for (j, v) in wv.iter_mut().enumerate() {
                        *v = _mm512_loadu_si512(w.add((b * 8 + j) * 16) as *const __m512i);
                    }
                    for a in 0..A {
                        let xb = (x[a] as *const u8).add(b * bs);
                        let q = xb.add(2) as *const i32;
                        let bx = |j: usize| _mm512_set1_epi32(std::ptr::read_unaligned(q.add(j)));
                        let zero = _mm512_setzero_si512();
                        let mut s0 = _mm512_dpbusd_epi32(zero, wv[0], bx(0));
                        let mut s1 = _mm512_dpbusd_epi32(zero, wv[4], bx(4));
                        for j in 1..4 {
                            s0 = _mm512_dpbusd_epi32(s0, wv[j], bx(j));
                            s1 = _mm512_dpbusd_epi32(s1, wv[j + 4], bx(j + 4));
                        }
                        if self.k {
                            iacc[a] = _mm512_add_epi32(
                                iacc[a],
                                _mm512_add_epi32(_mm512_mullo_epi32(s0, at(&self.ia, b * 2)), _mm512_mullo_epi32(s1, at(&self.ia, b * 2 + 1))),
                            );
                            if b % 8 == 7 {
                                let sb = b / 8;
                                let mut msum = _mm512_setzero_si512();
                                for p in 0..8 {
                                    msum = _mm512_dpwssd_epi32(msum, at(&self.ib, sb * 8 + p), _mm512_set1_epi32(pair16(*xsum[a].add(sb * 8 + p))));
                                }
                                let dx = _mm512_set1_ps(*dk[a].add(sb));
                                acc[a] =
                                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc[a]), _mm512_mul_ps(_mm512_loadu_ps(self.kd.as_ptr().add(sb * 16)), dx), acc[a]);
                                acc[a] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(msum), _mm512_mul_ps(_mm512_loadu_ps(self.kdm.as_ptr().add(sb * 16)), dx), acc[a]);
                                iacc[a] = _mm512_setzero_si512();
                            }
                            continue;
                        }
                        let (dx, half) = (scale(xb), *xsum[a].add(b));
                        let xsb = half[0] + half[1];
                        let sums = _mm512_sub_epi32(_mm512_add_epi32(s0, s1), _mm512_set1_epi32(offset * xsb));
                        let scales = _mm512_mul_ps(_mm512_loadu_ps(self.scale.as_ptr().add(b * 16)), _mm512_set1_ps(dx));
                        acc[a] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scales, acc[a]);
                        if self.unsigned {
                            let mins = _mm512_mul_ps(_mm512_loadu_ps(self.min.as_ptr().add(b * 16)), _mm512_set1_ps(dx));
                            acc[a] = _mm512_fmadd_ps(_mm512_set1_ps(xsb as f32), mins, acc[a]);
                        }
                    }
                }
                acc.map(|acc| {
                    let mut out = [0f32; 16];
                    _mm512_storeu_ps(out.as_mut_ptr(), acc);
                    out
                })
            }
        }

        /// Block b's integer sums of the eight rows, in two halves of 16
        /// values (`halves`), into the eight row sums: `Σq·x · scale·dx`,
        /// then (unsigned) `Σx · min·dx`; signed values' offset of 128
        /// (`offset`) taken off first.
        #[inline(always)]
        unsafe fn accumulate(&self, mut acc: __m256, halves: [__m256i; 2], b: usize, dx: f32, xsum: [i32; 2], offset: i32) -> __m256 {
            // SAFETY: the tile holds 8·kb scales and mins; b < kb.
            unsafe {
                let xs = xsum[0] + xsum[1];
                let sums = _mm256_sub_epi32(_mm256_add_epi32(halves[0], halves[1]), _mm256_set1_epi32(offset * xs));
                let scales = _mm256_mul_ps(_mm256_loadu_ps(self.scale.as_ptr().add(b * 8)), _mm256_set1_ps(dx));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scales, acc);
                if self.unsigned {
                    let mins = _mm256_mul_ps(_mm256_loadu_ps(self.min.as_ptr().add(b * 8)), _mm256_set1_ps(dx));
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(xs as f32), mins, acc);
                }
                acc
            }
        }

        /// [`Tile::accumulate`] of a K-quant: sub-block b's per-half sums
        /// times the rows' integer scales into the superblock's integer sums
        /// `iacc`; at the superblock's end the mins (each group's activation
        /// sum times the rows' integer mins) and the two fused multiply-adds
        /// of `dot_ref`.
        #[inline(always)]
        unsafe fn accumulate_k<D: Dp>(
            &self,
            mut acc: __m256,
            iacc: __m256i,
            halves: [__m256i; 2],
            b: usize,
            xsum: *const [i32; 2],
            dk: *const f32,
        ) -> (__m256, __m256i) {
            // SAFETY: the tile holds 2·kb scales and mins per row and kb/8
            // factors; xsum holds kb pairs and dk kb/8 scales.
            unsafe {
                let at = |v: &Vec<i32>, i: usize| _mm256_loadu_si256(v.as_ptr().add(i * 8) as *const __m256i);
                let iacc = _mm256_add_epi32(
                    iacc,
                    _mm256_add_epi32(_mm256_mullo_epi32(halves[0], at(&self.ia, b * 2)), _mm256_mullo_epi32(halves[1], at(&self.ia, b * 2 + 1))),
                );
                if b % 8 != 7 {
                    return (acc, iacc);
                }
                let sb = b / 8;
                let mut msum = _mm256_setzero_si256();
                for p in 0..8 {
                    msum = D::dpw(msum, at(&self.ib, sb * 8 + p), _mm256_set1_epi32(pair16(*xsum.add(sb * 8 + p))));
                }
                let dx = _mm256_set1_ps(*dk.add(sb));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc), _mm256_mul_ps(_mm256_loadu_ps(self.kd.as_ptr().add(sb * 8)), dx), acc);
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_mul_ps(_mm256_loadu_ps(self.kdm.as_ptr().add(sb * 8)), dx), acc);
                (acc, _mm256_setzero_si256())
            }
        }

        #[inline(always)]
        unsafe fn dot8_vnni<D: Dp>(&self, x: *const BlockQ8_0, xsum: *const [i32; 2], dk: *const f32) -> [f32; 8] {
            let x = x as *const u8;
            let xs = std::mem::size_of::<BlockQ8_0>();
            // SAFETY: x holds kb blocks and xsum kb sums; the tile holds 8·kb
            // vectors; the caller enables D's instruction.
            unsafe {
                let mut acc = _mm256_setzero_ps();
                let mut iacc = _mm256_setzero_si256();
                let w = self.inter.as_ptr();
                let offset = if self.unsigned { 0 } else { 128 };
                for b in 0..self.kb {
                    let xb = x.add(b * xs);
                    let q = xb.add(2) as *const i32;
                    let wv = |j: usize| _mm256_loadu_si256(w.add((b * 8 + j) * 8) as *const __m256i);
                    let bx = |j: usize| _mm256_set1_epi32(std::ptr::read_unaligned(q.add(j)));
                    // Two chains, one per half of 16 values, so that each
                    // vpdpbusd need not wait for the one before.
                    let zero = _mm256_setzero_si256();
                    let mut s0 = D::dp(zero, wv(0), bx(0));
                    let mut s1 = D::dp(zero, wv(4), bx(4));
                    for j in 1..4 {
                        s0 = D::dp(s0, wv(j), bx(j));
                        s1 = D::dp(s1, wv(j + 4), bx(j + 4));
                    }
                    // Σ (w+128)·x = Σ w·x + 128·Σ x
                    if self.k {
                        (acc, iacc) = self.accumulate_k::<D>(acc, iacc, [s0, s1], b, xsum, dk);
                    } else {
                        acc = self.accumulate(acc, [s0, s1], b, scale(xb), *xsum.add(b), offset);
                    }
                }
                let mut out = [0f32; 8];
                _mm256_storeu_ps(out.as_mut_ptr(), acc);
                out
            }
        }

        unsafe fn dot8_avx2(&self, x: *const BlockQ8_0, xsum: *const [i32; 2], dk: *const f32) -> [f32; 8] {
            let x = x as *const u8;
            let xs = std::mem::size_of::<BlockQ8_0>();
            // SAFETY: x holds kb blocks and xsum kb sums; the tile's vectors
            // hold 8·kb entries.
            unsafe {
                let mut acc = _mm256_setzero_ps();
                let mut iacc = _mm256_setzero_si256();
                for b in 0..self.kb {
                    let xb = x.add(b * xs);
                    let xv = Q8::values(xb, 0);
                    let p = |r: usize| {
                        let i = b * 8 + r;
                        let zero = _mm256_setzero_si256();
                        if self.unsigned { Avx2Dp::dp(zero, self.val[i], xv) } else { Avx2Dp::dp(zero, self.val[i], _mm256_sign_epi8(xv, self.sign[i])) }
                    };
                    // Pairwise sums leave row r's total in lane r.
                    let h01 = _mm256_hadd_epi32(p(0), p(1));
                    let h23 = _mm256_hadd_epi32(p(2), p(3));
                    let h45 = _mm256_hadd_epi32(p(4), p(5));
                    let h67 = _mm256_hadd_epi32(p(6), p(7));
                    let h0123 = _mm256_hadd_epi32(h01, h23);
                    let h4567 = _mm256_hadd_epi32(h45, h67);
                    // Lanes 0..4 of each hold rows' sums over values 0..16,
                    // lanes 4..8 over 16..32.
                    let halves = [_mm256_permute2x128_si256(h0123, h4567, 0x20), _mm256_permute2x128_si256(h0123, h4567, 0x31)];
                    if self.k {
                        (acc, iacc) = self.accumulate_k::<Avx2Dp>(acc, iacc, halves, b, xsum, dk);
                    } else {
                        acc = self.accumulate(acc, halves, b, scale(xb), *xsum.add(b), 0);
                    }
                }
                let mut out = [0f32; 8];
                _mm256_storeu_ps(out.as_mut_ptr(), acc);
                out
            }
        }
    }

    /// Two 16-bit values (a block's two sums of 16 activations, each
    /// |sum| ≤ 16·128, or two K-quant mins) as the halves of a dword, for
    /// `vpdpwssd`/`madd`.
    #[inline(always)]
    fn pair16(x: [i32; 2]) -> i32 {
        i32::from(x[0] as u16) | (x[1] << 16)
    }

    /// How far ahead in each row [`Tile::fill`] prefetches, in bytes.
    const FILL_AHEAD: usize = 1024;

    /// The 8×8 transpose of eight vectors of eight dwords: dword j of
    /// vector i becomes dword i of vector j.
    #[inline(always)]
    fn transpose8(v: [__m256i; 8]) -> [__m256i; 8] {
        // SAFETY: register-only AVX2, enabled for this build.
        unsafe {
            // Pairs of rows interleaved by dword, then by quadword: each
            // 128-bit lane then holds one dword of four rows.
            let lo = |a, b| _mm256_unpacklo_epi32(a, b);
            let hi = |a, b| _mm256_unpackhi_epi32(a, b);
            let s = [lo(v[0], v[1]), hi(v[0], v[1]), lo(v[2], v[3]), hi(v[2], v[3]), lo(v[4], v[5]), hi(v[4], v[5]), lo(v[6], v[7]), hi(v[6], v[7])];
            let u = [
                _mm256_unpacklo_epi64(s[0], s[2]),
                _mm256_unpackhi_epi64(s[0], s[2]),
                _mm256_unpacklo_epi64(s[1], s[3]),
                _mm256_unpackhi_epi64(s[1], s[3]),
                _mm256_unpacklo_epi64(s[4], s[6]),
                _mm256_unpackhi_epi64(s[4], s[6]),
                _mm256_unpacklo_epi64(s[5], s[7]),
                _mm256_unpackhi_epi64(s[5], s[7]),
            ];
            // u[j] holds dwords j (low lane) and j + 4 (high lane) of rows
            // 0..4, u[4 + j] of rows 4..8.
            std::array::from_fn(|j| {
                let (a, b) = (u[j % 4], u[4 + j % 4]);
                if j < 4 { _mm256_permute2x128_si256::<0x20>(a, b) } else { _mm256_permute2x128_si256::<0x31>(a, b) }
            })
        }
    }

    /// # Safety
    /// AVX2 and FMA are enabled (this module is compiled only then).
    pub(super) unsafe fn gelu8(xs: &mut [f32]) {
        // SAFETY: the loop reads and writes whole chunks of 8 inside `xs`.
        unsafe {
            let c = _mm256_set1_ps(super::GELU_C);
            let k = _mm256_set1_ps(0.044715);
            let one = _mm256_set1_ps(1.0);
            for chunk in xs.chunks_exact_mut(8) {
                let v = _mm256_loadu_ps(chunk.as_ptr());
                // u = c·v·(1 + k·v²); gelu = v / (1 + e^(-2u))
                let u = _mm256_mul_ps(_mm256_mul_ps(c, v), _mm256_fmadd_ps(_mm256_mul_ps(k, v), v, one));
                let e = exp(_mm256_mul_ps(u, _mm256_set1_ps(-2.0)));
                _mm256_storeu_ps(chunk.as_mut_ptr(), _mm256_div_ps(v, _mm256_add_ps(one, e)));
            }
        }
    }

    /// e^x for x in [-87, 88] (clamped outside).
    #[inline(always)]
    unsafe fn exp(x: __m256) -> __m256 {
        // SAFETY: AVX2/FMA are enabled for this build.
        unsafe {
            let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_set1_ps(88.0));
            // x = n·ln2 + r with |r| ≤ ln2/2; ln2 in two parts keeps r exact.
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)));
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
            let mut p = _mm256_set1_ps(1.0 / 720.0);
            for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
            }
            let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127))));
            _mm256_mul_ps(p, two_n)
        }
    }

    #[inline(always)]
    unsafe fn scale(p: *const u8) -> f32 {
        // SAFETY: every Q8_0 block starts with its f16 scale.
        half::f16::from_bits(unsafe { std::ptr::read_unaligned(p as *const u16) }).to_f32()
    }

    /// Dot products of four consecutive weight rows (`nb` blocks each, from
    /// `w`) with each of the R activation rows `x` (kb blocks, sums at
    /// `xsum`): each weight sub-block is unpacked once for all of them.
    ///
    /// # Safety
    /// `w` points at 4 rows of nb blocks of W (nb·subs = kb), each `x` at kb
    /// Q8_0 blocks and each `xsum` at kb sums; `isa` runs on this CPU.
    #[inline(always)]
    pub(super) unsafe fn dot4<W: Weight, const R: usize>(
        isa: Isa,
        w: *const W,
        nb: usize,
        kb: usize,
        x: [*const BlockQ8_0; R],
        xsum: [*const [i32; 2]; R],
        dk: [*const f32; R],
    ) -> [[f32; 4]; R] {
        // SAFETY: forwarded contract.
        unsafe {
            match isa {
                Isa::Avx2 => dot4_with::<Avx2Dp, W, R>(w, nb, kb, x, xsum, dk),
                Isa::AvxVnni => dot4_avx_vnni::<W, R>(w, nb, kb, x, xsum, dk),
                Isa::Avx512Vnni if W::K => dot4k_avx512::<W, R>(w, nb, x, xsum, dk),
                Isa::Avx512Vnni => dot4_avx512_vnni::<W, R>(w, nb, kb, x, xsum, dk),
            }
        }
    }

    #[target_feature(enable = "avxvnni")]
    unsafe fn dot4_avx_vnni<W: Weight, const R: usize>(
        w: *const W,
        nb: usize,
        kb: usize,
        x: [*const BlockQ8_0; R],
        xsum: [*const [i32; 2]; R],
        dk: [*const f32; R],
    ) -> [[f32; 4]; R] {
        // SAFETY: forwarded contract; the feature is enabled here.
        unsafe { dot4_with::<VexDp, W, R>(w, nb, kb, x, xsum, dk) }
    }

    #[target_feature(enable = "avx512vnni,avx512vl")]
    unsafe fn dot4_avx512_vnni<W: Weight, const R: usize>(
        w: *const W,
        nb: usize,
        kb: usize,
        x: [*const BlockQ8_0; R],
        xsum: [*const [i32; 2]; R],
        dk: [*const f32; R],
    ) -> [[f32; 4]; R] {
        // SAFETY: forwarded contract; the features are enabled here.
        unsafe { dot4_with::<EvexDp, W, R>(w, nb, kb, x, xsum, dk) }
    }

    /// [`dot4`] with D's instruction. Signed weights meet `vpdpbusd` offset
    /// by 128 (one `xor` per weight sub-block, the activation block's sum
    /// takes the offset off again), or AVX2's `maddubs` as absolute values
    /// against activations carrying their signs; unsigned ones go in as
    /// they are. The integer sums are the same either way.
    ///
    /// # Safety
    /// As [`dot4`]; the caller enables D's instruction.
    #[inline(always)]
    unsafe fn dot4_with<D: Dp, W: Weight, const R: usize>(
        w: *const W,
        nb: usize,
        kb: usize,
        x: [*const BlockQ8_0; R],
        xsum: [*const [i32; 2]; R],
        dk: [*const f32; R],
    ) -> [[f32; 4]; R] {
        if W::K {
            // SAFETY: forwarded contract.
            return unsafe { dot4k_with::<D, W, R>(w, nb, x, xsum, dk) };
        }
        let xs = std::mem::size_of::<BlockQ8_0>();
        let size = std::mem::size_of::<W>();
        // SAFETY: pointers valid per the contract.
        unsafe {
            let mut acc = [_mm_setzero_ps(); R];
            // The hardware prefetcher alone leaves a single thread at about
            // 60 % of its read bandwidth on the output head; asking for the
            // same block of the next four rows measured 20-30 % faster decoding.
            let ahead = prefetch_distance(nb * size);
            // Blocks of 32 here (K-quants went to `dot4k_with`): kb = nb.
            for b in 0..kb {
                let wb: [*const W; 4] = std::array::from_fn(|r| w.add(r * nb + b));
                let wv: [__m256i; 4] = std::array::from_fn(|r| {
                    // A prefetch past the end of the matrix is harmless.
                    _mm_prefetch::<_MM_HINT_T0>((wb[r] as *const i8).wrapping_add(ahead));
                    let v = W::Simd::values(wb[r] as *const u8, 0);
                    if W::UNSIGNED || !D::OFFSET { v } else { _mm256_xor_si256(v, _mm256_set1_epi8(0x80u8 as i8)) }
                });
                let aw: [__m256i; 4] = std::array::from_fn(|r| if W::UNSIGNED || D::OFFSET { wv[r] } else { _mm256_sign_epi8(wv[r], wv[r]) });
                // Only d and dm, so that the unused integer scales of a
                // block of 32 are never built.
                let (mut d, mut dm) = ([0f32; 4], [0f32; 4]);
                for r in 0..4 {
                    let k = (*wb[r]).int_scales();
                    (d[r], dm[r]) = (k.d, k.dm);
                }
                let ws = _mm_loadu_ps(d.as_ptr());
                let wm = _mm_loadu_ps(dm.as_ptr());
                for ((a, &xr), &sr) in acc.iter_mut().zip(&x).zip(&xsum) {
                    let xb = (xr as *const u8).add(b * xs);
                    let xv = Q8::values(xb, 0);
                    let xsb = *sr.add(b);
                    let zero = _mm256_setzero_si256();
                    let p = |r: usize| if W::UNSIGNED || D::OFFSET { D::dp(zero, aw[r], xv) } else { D::dp(zero, aw[r], _mm256_sign_epi8(xv, wv[r])) };
                    // Each weight row's exact integer sum for the block, then
                    // the fused multiply-adds of `dot_ref`.
                    let mut sums = hsum4([p(0), p(1), p(2), p(3)]);
                    let xg = xsb[0] + xsb[1];
                    if D::OFFSET && !W::UNSIGNED {
                        sums = _mm_sub_epi32(sums, _mm_set1_epi32(128 * xg));
                    }
                    let dx = _mm_set1_ps(scale(xb));
                    *a = _mm_fmadd_ps(_mm_cvtepi32_ps(sums), _mm_mul_ps(ws, dx), *a);
                    if W::UNSIGNED {
                        *a = _mm_fmadd_ps(_mm_set1_ps(xg as f32), _mm_mul_ps(wm, dx), *a);
                    }
                }
            }
            acc.map(|a| {
                let mut out = [0f32; 4];
                _mm_storeu_ps(out.as_mut_ptr(), a);
                out
            })
        }
    }
    /// A K-quant superblock's [`super::KScales`] in registers: the integer
    /// scales `a` and mins `b`, sixteen 16-bit lanes each, and `d`, `dm`.
    #[derive(Clone, Copy)]
    struct KVec {
        a: __m256i,
        b: __m256i,
        d: f32,
        dm: f32,
    }

    /// [`Weight::int_scales`] of the superblock at `blk` as a [`KVec`]:
    /// Q4_K and Q5_K (the common K-quants, whose 6-bit scales took scalar
    /// shifts and sixteen stores per row and superblock) and Q6_K straight
    /// into vectors, the others through their `int_scales`.
    ///
    /// # Safety
    /// `blk` points at a block of `W`, a [`Weight::K`] type.
    #[inline(always)]
    unsafe fn k_scales<W: Weight>(blk: *const W) -> KVec {
        // SAFETY: the block's bytes are in bounds; AVX2 is enabled for this
        // build.
        unsafe {
            let p = blk as *const u8;
            let bytes = std::slice::from_raw_parts(p, std::mem::size_of::<W>());
            let f16 = |at: usize| f16_at(bytes, at);
            match W::DTYPE {
                GgmlDType::Q4K | GgmlDType::Q5K => {
                    let (sc, mn) = k_scales_mins_6bit(bytes);
                    // Bytes 0..8 the scales, 8..16 the mins; each serves
                    // both groups of 16 of its sub-block.
                    let v = _mm_set_epi32(mn[1] as i32, mn[0] as i32, sc[1] as i32, sc[0] as i32);
                    KVec { a: _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(v, v)), b: _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(v, v)), d: f16(0), dm: -f16(2) }
                }
                GgmlDType::Q6K => {
                    // Sixteen signed 8-bit scales from byte 192, d at 208.
                    let a = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192) as *const __m128i));
                    let d = f16(208);
                    KVec { a, b: a, d, dm: -32.0 * d }
                }
                _ => {
                    let k = (*blk).int_scales();
                    KVec { a: _mm256_loadu_si256(k.a.as_ptr() as *const __m256i), b: _mm256_loadu_si256(k.b.as_ptr() as *const __m256i), d: k.d, dm: k.dm }
                }
            }
        }
    }

    /// Sub-blocks 2t and 2t+1 of the block at `p` in one 512-bit vector
    /// (2t in the low half). Q4_K and Q6_K keep such a pair side by side, so
    /// it is unpacked from one load of each part instead of two (about half
    /// the instructions); the others take two [`Unpack::values`].
    ///
    /// # Safety
    /// `p` points at a block of `W` with sub-blocks 2t and 2t+1; the CPU
    /// has AVX512-BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn pair512<W: Weight>(p: *const u8, t: usize) -> __m512i {
        // SAFETY: the loads lie in the block (144 or 210 bytes); features
        // enabled here.
        unsafe {
            match W::DTYPE {
                GgmlDType::Q4K => {
                    // The 32 bytes at 16 + 32t: low nibbles sub-block 2t,
                    // high nibbles 2t+1.
                    let q = _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(16 + 32 * t) as *const __m256i));
                    _mm512_and_si512(_mm512_mask_srli_epi16::<4>(q, 0xFFFF_0000, q), _mm512_set1_epi8(0x0F))
                }
                GgmlDType::Q6K => {
                    // Low four bits: the 64 bytes at 64·(t/2), their low
                    // nibbles for even t, high for odd. Top two: the 32
                    // bytes at 128 + 32·(t/2), bits 4·(t%2) for 2t and two
                    // above for 2t+1.
                    let shift = _mm_cvtsi32_si128(4 * (t % 2) as i32);
                    let lo = _mm512_srl_epi16(_mm512_loadu_si512(p.add(64 * (t / 2)) as *const __m512i), shift);
                    let hi = _mm512_srl_epi16(_mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(128 + 32 * (t / 2)) as *const __m256i)), shift);
                    let hi = _mm512_mask_srli_epi16::<2>(hi, 0xFFFF_0000, hi);
                    let hi = _mm512_slli_epi16::<4>(_mm512_and_si512(hi, _mm512_set1_epi8(3)));
                    // (lo & 0x0F) | hi
                    _mm512_ternarylogic_epi32::<0xEA>(lo, _mm512_set1_epi8(0x0F), hi)
                }
                _ => _mm512_inserti64x4::<1>(_mm512_castsi256_si512(W::Simd::values(p, 2 * t)), W::Simd::values(p, 2 * t + 1)),
            }
        }
    }

    /// Where the `vpermw` of [`dot4k_avx512`] takes each 16-bit lane's
    /// scale from: lane l of sub-block pair t takes scale 4t + l/8 (built
    /// once, at compile time, not per call).
    const PAIR_SCALES: [[i16; 32]; 4] = {
        let mut a = [[0i16; 32]; 4];
        let mut t = 0;
        while t < 4 {
            let mut l = 0;
            while l < 32 {
                a[t][l] = (4 * t + l / 8) as i16;
                l += 1;
            }
            t += 1;
        }
        a
    };

    /// [`dot4k_with`] on 512-bit vectors: two sub-blocks of each row per
    /// `maddubs` and `vpdpwssd`, their four scales put in place by one
    /// `vpermw`; the same integer sums, so the same results.
    ///
    /// # Safety
    /// As [`dot4k_with`]; the CPU has AVX512-VNNI and AVX512-BW.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl")]
    unsafe fn dot4k_avx512<W: Weight, const R: usize>(
        w: *const W,
        nb: usize,
        x: [*const BlockQ8_0; R],
        xsum: [*const [i32; 2]; R],
        dk: [*const f32; R],
    ) -> [[f32; 4]; R] {
        let xs = std::mem::size_of::<BlockQ8_0>();
        let size = std::mem::size_of::<W>();
        // SAFETY: pointers valid per the contract; features enabled here.
        unsafe {
            let mut acc = [_mm_setzero_ps(); R];
            let ahead = 4 * nb * size;
            let idx: [__m512i; 4] = std::array::from_fn(|t| _mm512_loadu_si512(PAIR_SCALES[t].as_ptr() as *const __m512i));
            for blk in 0..nb {
                let wb: [*const W; 4] = std::array::from_fn(|r| w.add(r * nb + blk));
                let ks: [KVec; 4] = std::array::from_fn(|r| k_scales(wb[r]));
                let a: [__m512i; 4] = std::array::from_fn(|r| _mm512_castsi256_si512(ks[r].a));
                let mut iacc = [[_mm512_setzero_si512(); 4]; R];
                for (t, idx) in idx.iter().enumerate() {
                    let mut v = [_mm512_setzero_si512(); 4];
                    let mut sc = [_mm512_setzero_si512(); 4];
                    for r in 0..4 {
                        // The next rows' superblock: a line per pair, and
                        // its last byte (a block of up to 256 bytes spans at
                        // most five lines).
                        let next = (wb[r] as *const i8).wrapping_add(ahead);
                        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(64 * t));
                        if t == 0 {
                            _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(size - 1));
                        }
                        v[r] = pair512::<W>(wb[r] as *const u8, t);
                        sc[r] = _mm512_permutexvar_epi16(*idx, a[r]);
                    }
                    for (i, &xr) in x.iter().enumerate() {
                        let xb = (xr as *const u8).add((blk * 8 + 2 * t) * xs + 2);
                        let xv = _mm512_inserti64x4::<1>(
                            _mm512_castsi256_si512(_mm256_loadu_si256(xb as *const __m256i)),
                            _mm256_loadu_si256(xb.add(xs) as *const __m256i),
                        );
                        for r in 0..4 {
                            iacc[i][r] = _mm512_dpwssd_epi32(iacc[i][r], _mm512_maddubs_epi16(v[r], xv), sc[r]);
                        }
                    }
                }
                let half = |v: __m512i| _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v));
                let isum: [__m128i; R] = std::array::from_fn(|i| hsum4(std::array::from_fn(|r| half(iacc[i][r]))));
                superblock_end(&mut acc, isum, &ks, xsum, dk, blk);
            }
            acc.map(|a| {
                let mut out = [0f32; 4];
                _mm_storeu_ps(out.as_mut_ptr(), a);
                out
            })
        }
    }

    /// How far ahead of the four rows being read to prefetch (blocks of
    /// 32): the same place four rows on, or a multiple of four rows of at
    /// least 8 KiB when rows are short (one core needs several KiB in flight
    /// to stream at full speed). Measured: the fixture's decoding +25 % on
    /// one thread; the K-quant kernels, which read fewer bytes per
    /// instruction, were slower with it and keep four rows.
    #[inline(always)]
    fn prefetch_distance(row_bytes: usize) -> usize {
        let four = 4 * row_bytes;
        four * (8192 / four).max(1)
    }

    /// The end of superblock `blk` in the K-quant decode kernels: for each
    /// activation row i, the four weight rows' integer sums `isum[i]`, then
    /// their mins (the activations' sums per 16 against each row's integer
    /// mins), into the row sums with the two fused multiply-adds of
    /// `dot_ref`.
    ///
    /// # Safety
    /// `xsum[i]` holds the row's pairs of sums and `dk[i]` its superblock
    /// scales, past `blk`.
    #[inline(always)]
    unsafe fn superblock_end<const R: usize>(
        acc: &mut [__m128; R],
        isum: [__m128i; R],
        ks: &[KVec; 4],
        xsum: [*const [i32; 2]; R],
        dk: [*const f32; R],
        blk: usize,
    ) {
        // SAFETY: forwarded contract; AVX2 is enabled for this build.
        unsafe {
            let d = _mm_set_ps(ks[3].d, ks[2].d, ks[1].d, ks[0].d);
            let dm = _mm_set_ps(ks[3].dm, ks[2].dm, ks[1].dm, ks[0].dm);
            // Each row's mins in the order that `packs` leaves the
            // activations' sums in (groups 0-3, 8-11, 4-7, 12-15).
            let mins: [__m256i; 4] = std::array::from_fn(|r| _mm256_permute4x64_epi64::<0xD8>(ks[r].b));
            for i in 0..R {
                let sums = xsum[i].add(blk * 8) as *const __m256i;
                let bsums = _mm256_packs_epi32(_mm256_loadu_si256(sums), _mm256_loadu_si256(sums.add(1)));
                let msum = hsum4(std::array::from_fn(|r| _mm256_madd_epi16(bsums, mins[r])));
                let dx = _mm_set1_ps(*dk[i].add(blk));
                acc[i] = _mm_fmadd_ps(_mm_cvtepi32_ps(isum[i]), _mm_mul_ps(d, dx), acc[i]);
                acc[i] = _mm_fmadd_ps(_mm_cvtepi32_ps(msum), _mm_mul_ps(dm, dx), acc[i]);
            }
        }
    }

    /// The sums of four rows' eight dword lanes each, exact: lane r of
    /// the result is row r's.
    #[inline(always)]
    unsafe fn hsum4(v: [__m256i; 4]) -> __m128i {
        // SAFETY: register-only AVX2.
        unsafe {
            let h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
            _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1))
        }
    }

    /// [`dot4`] of a K-quant ([`Weight::K`]): per superblock and row, each
    /// sub-block's unsigned values meet the activations in `maddubs`
    /// (16-bit pair sums, no saturation: 63·127·2 < 2¹⁵) and the sub-block's
    /// integer scales in `vpdpwssd` / `madd` (16 bits each half), into one
    /// integer accumulator; the mins are the activations' sums per 16
    /// (`xsum`) against the integer mins. Floats are touched once per
    /// superblock, as in [`super::dot_ref`].
    ///
    /// # Safety
    /// As [`dot4`], with `dk` at nb superblock scales per activation row.
    #[inline(always)]
    unsafe fn dot4k_with<D: Dp, W: Weight, const R: usize>(
        w: *const W,
        nb: usize,
        x: [*const BlockQ8_0; R],
        xsum: [*const [i32; 2]; R],
        dk: [*const f32; R],
    ) -> [[f32; 4]; R] {
        let xs = std::mem::size_of::<BlockQ8_0>();
        let size = std::mem::size_of::<W>();
        // SAFETY: pointers valid per the contract.
        unsafe {
            let mut acc = [_mm_setzero_ps(); R];
            let ahead = 4 * nb * size;
            for blk in 0..nb {
                let wb: [*const W; 4] = std::array::from_fn(|r| w.add(r * nb + blk));
                let ks: [KVec; 4] = std::array::from_fn(|r| k_scales(wb[r]));
                // The scales one by one, to broadcast.
                let mut a = [[0i16; 16]; 4];
                for (a, k) in a.iter_mut().zip(&ks) {
                    _mm256_storeu_si256(a.as_mut_ptr() as *mut __m256i, k.a);
                }
                let mut iacc = [[_mm256_setzero_si256(); 4]; R];
                for s in 0..8 {
                    let mut v = [_mm256_setzero_si256(); 4];
                    let mut sc = [_mm256_setzero_si256(); 4];
                    for r in 0..4 {
                        // The next rows' superblock: its lines, then its
                        // last byte.
                        let next = (wb[r] as *const i8).wrapping_add(ahead);
                        if s < 4 {
                            _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(64 * s));
                        } else if s == 4 {
                            _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(size - 1));
                        }
                        v[r] = W::Simd::values(wb[r] as *const u8, s);
                        // Values 0..16 take scale 2s, 16..32 scale 2s+1.
                        sc[r] = _mm256_set_m128i(_mm_set1_epi16(a[r][2 * s + 1]), _mm_set1_epi16(a[r][2 * s]));
                    }
                    for (i, &xr) in x.iter().enumerate() {
                        let xv = Q8::values((xr as *const u8).add((blk * 8 + s) * xs), 0);
                        for r in 0..4 {
                            iacc[i][r] = D::dpw(iacc[i][r], _mm256_maddubs_epi16(v[r], xv), sc[r]);
                        }
                    }
                }
                superblock_end(&mut acc, iacc.map(|v| hsum4(v)), &ks, xsum, dk, blk);
            }
            acc.map(|a| {
                let mut out = [0f32; 4];
                _mm_storeu_ps(out.as_mut_ptr(), a);
                out
            })
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
mod imp {
    use candle_core::quantized::k_quants::BlockQ8_0;

    use super::{Isa, Weight};

    pub(crate) trait Unpack {}
    pub(crate) struct Q8;
    pub(crate) struct Q5;
    pub(crate) struct Q40;
    pub(crate) struct Q41;
    pub(crate) struct Q51;
    pub(crate) struct Q4K;
    pub(crate) struct Q5K;
    pub(crate) struct Q6K;
    pub(crate) struct Q3K;
    pub(crate) struct Q2K;
    impl Unpack for Q8 {}
    impl Unpack for Q5 {}
    impl Unpack for Q40 {}
    impl Unpack for Q41 {}
    impl Unpack for Q51 {}
    impl Unpack for Q4K {}
    impl Unpack for Q5K {}
    impl Unpack for Q6K {}
    impl Unpack for Q3K {}
    impl Unpack for Q2K {}

    pub(super) fn has_avx_vnni() -> bool {
        false
    }

    pub(super) fn has_avx512_vnni() -> bool {
        false
    }

    /// Never called: `AVAILABLE` is false in this build.
    pub(super) unsafe fn quantize_q8k(_x: &[f32], _out: &mut [BlockQ8_0]) -> f32 {
        unreachable!("matmul asserts AVAILABLE")
    }

    /// Called only with an empty slice: `AVAILABLE` is false in this build.
    pub(super) unsafe fn gelu8(xs: &mut [f32]) {
        assert!(xs.is_empty(), "gelu8 needs AVX2");
    }

    /// Never built: `AVAILABLE` is false in this build.
    pub(crate) struct Tile;

    impl Tile {
        pub(super) fn rows(_isa: Isa) -> usize {
            8
        }
        pub(super) fn new(_kb: usize, _isa: Isa) -> Self {
            unreachable!("matmul asserts AVAILABLE")
        }
        pub(super) unsafe fn fill<W: Weight>(&mut self, _w: *const W, _nb: usize) {
            unreachable!("matmul asserts AVAILABLE")
        }
        pub(super) unsafe fn dot(&self, _x: *const BlockQ8_0, _xsum: *const [i32; 2], _dk: *const f32) -> [f32; 16] {
            unreachable!("matmul asserts AVAILABLE")
        }
        pub(super) unsafe fn dot4(&self, _x: [*const BlockQ8_0; 4], _xsum: [*const [i32; 2]; 4], _dk: [*const f32; 4]) -> [[f32; 16]; 4] {
            unreachable!("matmul asserts AVAILABLE")
        }
    }

    /// Never called: `AVAILABLE` is false in this build.
    pub(super) unsafe fn dot4<W: Weight, const R: usize>(
        _isa: Isa,
        _w: *const W,
        _nb: usize,
        _kb: usize,
        _x: [*const BlockQ8_0; R],
        _xsum: [*const [i32; 2]; R],
        _dk: [*const f32; R],
    ) -> [[f32; 4]; R] {
        unreachable!("matmul asserts AVAILABLE")
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::k_quants::{BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0};
    use candle_core::quantized::{GgmlDType, GgmlType, QTensor};
    use candle_core::{Device, Tensor};

    use super::{Isa, Weight};

    #[test]
    fn gelu_matches_candle() {
        let dev = Device::Cpu;
        let mut xs: Vec<f32> = (-2000..2000).map(|i| i as f32 * 0.01).collect();
        xs.extend([-100.0, -30.0, -9.5, 9.5, 30.0, 100.0, 0.0, 1e-8, -1e-8]);
        let want = Tensor::new(xs.as_slice(), &dev).unwrap().gelu().unwrap().to_vec1::<f32>().unwrap();
        let got = Tensor::new(xs.as_slice(), &dev).unwrap().apply_op1_no_bwd(&super::GeluTanh).unwrap().to_vec1::<f32>().unwrap();
        for ((x, a), b) in xs.iter().zip(&got).zip(&want) {
            assert!((a - b).abs() <= 2e-6 * b.abs().max(1.0), "gelu({x}) = {a}, candle says {b}");
        }
    }

    /// Shapes with odd row counts, rows left over after the groups of four
    /// and eight, and inner sizes that are and are not multiples of 256.
    fn shapes(dtype: GgmlDType) -> Vec<(usize, usize)> {
        if dtype.block_size() == 256 { vec![(256, 9), (512, 43), (768, 17), (1024, 8)] } else { vec![(640, 262), (128, 9), (2048, 17), (64, 8), (96, 43)] }
    }

    /// Each type's values, one by one, are candle's dequantization.
    fn values_match_candle<W: Weight>(dtype: GgmlDType) {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (4, 512), &dev).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let want = q.dequantize(&dev).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let blocks: Vec<W> = crate::gguf::blocks_from_bytes(&q.data().unwrap());
        for (i, want) in want.chunks(32).enumerate() {
            let (b, s) = (&blocks[i / super::subs::<W>()], i % super::subs::<W>());
            let v = b.values(s);
            let k = b.int_scales();
            for (j, &want) in want.iter().enumerate() {
                let g = if W::K { 2 * s + j / 16 } else { 0 };
                let got = k.d * f32::from(k.a[g]) * f32::from(v[j]) + k.dm * f32::from(k.b[g]);
                assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "{dtype:?} sub-block {i} value {j}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn every_type_unpacks_as_candle_dequantizes() {
        values_match_candle::<BlockQ8_0>(GgmlDType::Q8_0);
        values_match_candle::<BlockQ5_0>(GgmlDType::Q5_0);
        values_match_candle::<BlockQ4_0>(GgmlDType::Q4_0);
        values_match_candle::<BlockQ4_1>(GgmlDType::Q4_1);
        values_match_candle::<BlockQ5_1>(GgmlDType::Q5_1);
        values_match_candle::<BlockQ4K>(GgmlDType::Q4K);
        values_match_candle::<BlockQ5K>(GgmlDType::Q5K);
        values_match_candle::<BlockQ6K>(GgmlDType::Q6K);
        values_match_candle::<BlockQ3K>(GgmlDType::Q3K);
        values_match_candle::<BlockQ2K>(GgmlDType::Q2K);
    }

    /// Products agree with candle's own kernels (which quantize activations
    /// differently for some types: Q8_1, Q8_K) to within quantization noise.
    fn near_candle<W: Weight>(dtype: GgmlDType) {
        let dev = Device::Cpu;
        for isa in Isa::supported() {
            for (k, n) in shapes(dtype) {
                for m in [1, 3, 5, 9] {
                    let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
                    let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
                    let q = QTensor::quantize(&w, dtype).unwrap();
                    let blocks: Vec<W> = crate::gguf::blocks_from_bytes(&q.data().unwrap());
                    let exact = x.matmul(&q.dequantize(&dev).unwrap().t().unwrap().contiguous().unwrap()).unwrap();
                    let exact = exact.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let mut got = vec![0f32; m * n];
                    super::matmul_with::<W>(isa, m, k, n, &x, &blocks, &mut got);
                    // Rounding activations to Q8_0 moves each term by up to
                    // ~1 % of its size: k terms of size ~1 are off by a
                    // standard deviation of ~0.006·√k; a wrong value or
                    // scale is off by far more.
                    let tol = 0.05 * (k as f32).sqrt();
                    for (i, (a, b)) in got.iter().zip(&exact).enumerate() {
                        assert!((a - b).abs() <= tol, "{dtype:?} {isa:?} {m}x{k}x{n} at {i}: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn products_match_the_dequantized_weights_on_odd_shapes() {
        if !super::AVAILABLE {
            return;
        }
        near_candle::<BlockQ8_0>(GgmlDType::Q8_0);
        near_candle::<BlockQ5_0>(GgmlDType::Q5_0);
        near_candle::<BlockQ4_0>(GgmlDType::Q4_0);
        near_candle::<BlockQ4_1>(GgmlDType::Q4_1);
        near_candle::<BlockQ5_1>(GgmlDType::Q5_1);
        near_candle::<BlockQ4K>(GgmlDType::Q4K);
        near_candle::<BlockQ5K>(GgmlDType::Q5K);
        near_candle::<BlockQ6K>(GgmlDType::Q6K);
        near_candle::<BlockQ3K>(GgmlDType::Q3K);
        near_candle::<BlockQ2K>(GgmlDType::Q2K);
    }

    /// Every path gives every row exactly the scalar reference's result, so a
    /// row's logits do not depend on how many rows were multiplied with it.
    fn bit_for_bit<W: Weight>(dtype: GgmlDType) {
        let dev = Device::Cpu;
        for (k, n) in shapes(dtype) {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let blocks: Vec<W> = crate::gguf::blocks_from_bytes(&q.data().unwrap());
            let (kb, nb) = (k / 32, k / W::BLCK_SIZE);
            let x = Tensor::randn(0f32, 1.0, (9, k), &dev).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut want = vec![0f32; 9 * n];
            for r in 0..9 {
                let mut xq: Vec<BlockQ8_0> = (0..kb).map(|_| BlockQ8_0::zeros()).collect();
                let mut dk = vec![0f32; if W::K { nb } else { 0 }];
                if W::K {
                    super::quantize_q8k_ref(&x[r * k..(r + 1) * k], &mut xq, &mut dk);
                } else {
                    BlockQ8_0::from_float(&x[r * k..(r + 1) * k], &mut xq);
                }
                for c in 0..n {
                    want[r * n + c] = super::dot_ref(&blocks[c * nb..(c + 1) * nb], &xq, &dk);
                }
            }
            for isa in Isa::supported() {
                for m in [1, 2, 3, 4, 5, 8, 9] {
                    let mut got = vec![0f32; m * n];
                    super::matmul_with::<W>(isa, m, k, n, &x[..m * k], &blocks, &mut got);
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(a.to_bits(), b.to_bits(), "{dtype:?} {isa:?} m {m} k {k} n {n}: row {} column {}: {a} vs {b}", i / n, i % n);
                    }
                }
            }
        }
    }

    #[test]
    fn every_row_equals_the_scalar_reference_bit_for_bit_whatever_the_row_count() {
        if !super::AVAILABLE {
            return;
        }
        bit_for_bit::<BlockQ8_0>(GgmlDType::Q8_0);
        bit_for_bit::<BlockQ5_0>(GgmlDType::Q5_0);
        bit_for_bit::<BlockQ4_0>(GgmlDType::Q4_0);
        bit_for_bit::<BlockQ4_1>(GgmlDType::Q4_1);
        bit_for_bit::<BlockQ5_1>(GgmlDType::Q5_1);
        bit_for_bit::<BlockQ4K>(GgmlDType::Q4K);
        bit_for_bit::<BlockQ5K>(GgmlDType::Q5K);
        bit_for_bit::<BlockQ6K>(GgmlDType::Q6K);
        bit_for_bit::<BlockQ3K>(GgmlDType::Q3K);
        bit_for_bit::<BlockQ2K>(GgmlDType::Q2K);
    }

    /// The vectorized Q8_K quantizer writes candle's bytes and scale: random
    /// rows, rows whose products land exactly on halves, ties for the
    /// largest magnitude, zeros, a NaN and infinities.
    #[test]
    fn activations_quantize_to_q8k_as_candle_does() {
        if !super::AVAILABLE {
            return;
        }
        let mut rows: Vec<Vec<f32>> = (0..6).map(|i| Tensor::randn(0f32, 1.0 + 10.0 * i as f32, 256, &Device::Cpu).unwrap().to_vec1().unwrap()).collect();
        // The largest magnitude -127 makes the scale 1: products are the
        // values themselves, halves included.
        rows.push((0..256).map(|i| if i == 7 { -127.0 } else { (i as f32 - 128.0) * 0.5 }).collect());
        // +a before -a and -a before +a.
        rows.push(
            (0..256)
                .map(|i| match i {
                    3 => 9.0,
                    200 => -9.0,
                    _ => (i % 17) as f32 * 0.25 - 2.0,
                })
                .collect(),
        );
        rows.push(
            (0..256)
                .map(|i| match i {
                    3 => -9.0,
                    200 => 9.0,
                    _ => (i % 13) as f32 * -0.3,
                })
                .collect(),
        );
        rows.push(vec![0.0; 256]);
        rows.push((0..256).map(|i| if i == 5 { f32::NAN } else { i as f32 * 0.01 }).collect());
        rows.push((0..256).map(|i| if i == 9 { f32::INFINITY } else { i as f32 }).collect());
        rows.push((0..256).map(|i| if i == 0 { 1e-42 } else { 0.0 }).collect());
        for (n, row) in rows.iter().enumerate() {
            let row: Vec<f32> = row.iter().chain(rows[0].iter()).copied().collect();
            let (mut got, mut want) = ((0..16).map(|_| BlockQ8_0::zeros()).collect::<Vec<_>>(), (0..16).map(|_| BlockQ8_0::zeros()).collect::<Vec<_>>());
            let (mut dg, mut dw) = ([0f32; 2], [0f32; 2]);
            super::quantize_q8k(&row, &mut got, &mut dg);
            super::quantize_q8k_ref(&row, &mut want, &mut dw);
            assert_eq!(dg.map(f32::to_bits), dw.map(f32::to_bits), "row {n}: scales {dg:?} vs {dw:?}");
            for (b, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(&super::block_bytes(g)[2..], &super::block_bytes(w)[2..], "row {n}, block {b}");
            }
        }
    }

    /// The op the model calls gives what `matmul` gives, for activations of
    /// any leading shape, and refuses types it does not cover.
    #[test]
    fn the_candle_op_multiplies_batched_activations() {
        if !super::AVAILABLE {
            return;
        }
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (24, 512), &dev).unwrap();
        let q = std::sync::Arc::new(QTensor::quantize(&w, GgmlDType::Q4K).unwrap());
        let x = Tensor::randn(0f32, 1.0, (2, 3, 512), &dev).unwrap();
        let y = x.apply_op1_no_bwd(&super::QuantMatmul(q.clone())).unwrap();
        assert_eq!(y.dims(), &[2, 3, 24]);
        let blocks: Vec<BlockQ4K> = crate::gguf::blocks_from_bytes(&q.data().unwrap());
        let mut want = vec![0f32; 6 * 24];
        super::matmul(6, 512, 24, &x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), &blocks, &mut want);
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        let f16 = std::sync::Arc::new(QTensor::quantize(&w, GgmlDType::F16).unwrap());
        assert!(!super::covers(GgmlDType::F16));
        let err = x.apply_op1_no_bwd(&super::QuantMatmul(f16)).unwrap_err().to_string();
        assert!(err.contains("F16"), "{err}");
    }
}
