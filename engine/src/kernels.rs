//! CPU matrix products for Q8_0 and Q5_0 weights, faster than candle's
//! generic path.
//!
//! candle multiplies Q8_0 rows one at a time with a single accumulator, so
//! the loop waits on each fused multiply-add, and has only scalar code for
//! Q5_0; when the inner dimension is not a multiple of 256 (Gemma 3 270M's
//! 640) its repacked kernels do not apply either, and the 262 144-row output
//! head spent most of decoding there. Here four weight rows share each
//! activation block and keep four independent accumulators; Q5_0 blocks are
//! widened to signed bytes in registers (low nibble, fifth bit from `qh`,
//! minus 16), so both types read the file in place with no copy.
//! Activations are quantized by candle's own Q8_0 routine and the integer
//! dot products are the same, so results equal candle's up to float
//! summation order.

use candle_core::quantized::GgmlType;
use candle_core::quantized::k_quants::{BlockQ5_0, BlockQ8_0};

/// Whether this build has the kernels (x86-64 with AVX2, which the release
/// baseline x86-64-v3 guarantees).
pub(crate) const AVAILABLE: bool = cfg!(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"));

/// A weight block type the kernels multiply against Q8_0 activations.
pub(crate) trait Weight: GgmlType<VecDotType = BlockQ8_0> + Sync {
    /// Dot products of four consecutive weight rows (each `kb` blocks) with
    /// each of the R activation rows `x`: each weight block is unpacked once
    /// for all of them.
    ///
    /// # Safety
    /// `w` must point at 4·kb blocks and each `x` at kb blocks; [`AVAILABLE`].
    unsafe fn dot4<const R: usize>(w: *const Self, kb: usize, x: [*const BlockQ8_0; R]) -> [[f32; 4]; R];

    /// Unpacks eight consecutive weight rows into `tile` for [`dot8`].
    ///
    /// # Safety
    /// `w` must point at 8·kb blocks, with kb the tile's; [`AVAILABLE`].
    unsafe fn fill(tile: &mut Tile, w: *const Self);

    /// The block's 32 values and its scale, unpacked one by one (for [`dot_ref`]).
    fn values(&self) -> ([i8; 32], f32);
}

/// A block's bytes (blocks are `repr(C)` in the GGUF layout, starting with
/// their f16 scale).
fn block_bytes<T>(b: &T) -> &[u8] {
    // SAFETY: a block is plain old data of size_of::<T>() bytes.
    unsafe { std::slice::from_raw_parts(b as *const T as *const u8, std::mem::size_of::<T>()) }
}

fn f16_at(bytes: &[u8]) -> f32 {
    half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

impl Weight for BlockQ8_0 {
    unsafe fn dot4<const R: usize>(w: *const Self, kb: usize, x: [*const BlockQ8_0; R]) -> [[f32; 4]; R] {
        // SAFETY: forwarded contract.
        unsafe { imp::dot4::<imp::Q8, R>(w as *const u8, kb, x) }
    }

    unsafe fn fill(tile: &mut Tile, w: *const Self) {
        // SAFETY: forwarded contract.
        unsafe { tile.0.fill::<imp::Q8>(w as *const u8) }
    }

    fn values(&self) -> ([i8; 32], f32) {
        let b = block_bytes(self);
        (std::array::from_fn(|j| b[2 + j] as i8), f16_at(b))
    }
}

impl Weight for BlockQ5_0 {
    unsafe fn dot4<const R: usize>(w: *const Self, kb: usize, x: [*const BlockQ8_0; R]) -> [[f32; 4]; R] {
        // SAFETY: forwarded contract.
        unsafe { imp::dot4::<imp::Q5, R>(w as *const u8, kb, x) }
    }

    unsafe fn fill(tile: &mut Tile, w: *const Self) {
        // SAFETY: forwarded contract.
        unsafe { tile.0.fill::<imp::Q5>(w as *const u8) }
    }

    /// f16 scale, u32 `qh` (bit j: fifth bit of value j), 16 bytes of
    /// nibbles (low: values 0..16, high: 16..32); a value is the five bits
    /// minus 16.
    fn values(&self) -> ([i8; 32], f32) {
        let b = block_bytes(self);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let v = std::array::from_fn(|j| {
            let nibble = if j < 16 { b[6 + j] & 0x0F } else { b[6 + j - 16] >> 4 };
            (nibble | ((((qh >> j) & 1) as u8) << 4)) as i8 - 16
        });
        (v, f16_at(b))
    }
}

/// The arithmetic every kernel here reproduces exactly: per block, the
/// integer dot product of the 32 values (exact), then one fused
/// multiply-add of it times the product of the two scales into one f32 sum.
///
/// Because every path (one row at a time, eight-row tiles, VNNI or not, the
/// leftover columns) computes this same sequence of roundings, a row's result
/// does not depend on how many rows are multiplied together: a sequence
/// decoded alone and one decoded in a batch get identical logits.
pub(crate) fn dot_ref<W: Weight>(w: &[W], x: &[BlockQ8_0]) -> f32 {
    let mut acc = 0f32;
    for (wb, xb) in w.iter().zip(x) {
        let ((wv, ws), (xv, xs)) = (wb.values(), xb.values());
        let isum: i32 = wv.iter().zip(&xv).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
        acc = (isum as f32).mul_add(ws * xs, acc);
    }
    acc
}

/// `dst (m×n) = lhs (m×k) · rhs (n×k)ᵀ` with `rhs` in blocks of 32.
///
/// # Panics
/// On mismatched lengths (the callers, candle's matmul dispatch, check them).
pub(crate) fn matmul<W: Weight>(m: usize, k: usize, n: usize, lhs: &[f32], rhs: &[W], dst: &mut [f32]) {
    matmul_with(imp::Tile::vnni(), m, k, n, lhs, rhs, dst);
}

/// Up to this many activation rows are multiplied straight from the weights
/// (decoding a batch of sequences); more use the unpacked tile (a prompt).
const DECODE_ROWS: usize = 8;

/// [`matmul`] with the VNNI tile on or off (`vnni` only where the CPU has it).
fn matmul_with<W: Weight>(vnni: bool, m: usize, k: usize, n: usize, lhs: &[f32], rhs: &[W], dst: &mut [f32]) {
    assert!(AVAILABLE && k.is_multiple_of(32) && lhs.len() == m * k && rhs.len() == n * (k / 32) && dst.len() >= m * n);
    let kb = k / 32;
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    let mut xq: Vec<BlockQ8_0> = (0..m * kb).map(|_| BlockQ8_0::zeros()).collect();
    if m < threads {
        for r in 0..m {
            BlockQ8_0::from_float(&lhs[r * k..(r + 1) * k], &mut xq[r * kb..(r + 1) * kb]);
        }
    } else {
        // A prompt's activation rows are quantized on every thread.
        let per = m.div_ceil(threads);
        let xq_addr = xq.as_mut_ptr() as usize;
        pool.execute(|t| {
            for r in (t * per).min(m)..((t + 1) * per).min(m) {
                // SAFETY: row r's kb blocks are written by this thread only.
                let row = unsafe { std::slice::from_raw_parts_mut((xq_addr as *mut BlockQ8_0).add(r * kb), kb) };
                BlockQ8_0::from_float(&lhs[r * k..(r + 1) * k], row);
            }
        });
    }
    // The VNNI tile stores weights offset by 128 (unsigned bytes); each
    // activation block's sum undoes the offset.
    let xsum: Vec<i32> = if m > DECODE_ROWS && vnni { xq.iter().map(block_sum).collect() } else { Vec::new() };
    let xsum = &xsum;
    let dst_addr = dst.as_mut_ptr() as usize;
    // A prompt (many activation rows) unpacks eight weight rows into a tile
    // that every activation row then meets. Decoding (one row, or a batch of
    // a few sequences), where reading the weights is the cost, takes four
    // weight rows at a time straight from the file, each block unpacked once
    // for up to four activation rows. Weight rows left over go one by one.
    let group = if m > DECODE_ROWS { 8 } else { 4 };
    let groups = n / group;
    let per = groups.div_ceil(threads);
    let xq = &xq;
    pool.execute(|t| {
        let (g0, g1) = ((t * per).min(groups), ((t + 1) * per).min(groups));
        let mut tile = if group == 8 && g1 > g0 { Some(Tile(imp::Tile::new(kb, vnni))) } else { None };
        let dst = |r: usize, col: usize, out: &[f32]| {
            // SAFETY: each (row, column) of dst is written by exactly one
            // thread: threads own disjoint column ranges.
            unsafe { std::ptr::copy_nonoverlapping(out.as_ptr(), (dst_addr as *mut f32).add(r * n + col), out.len()) };
        };
        let x = |r: usize| xq[r * kb..(r + 1) * kb].as_ptr();
        for g in g0..g1 {
            let col = g * group;
            let w = rhs[col * kb..].as_ptr();
            // SAFETY (kernel calls): they read `group` weight rows of kb
            // blocks from `col`, inside `rhs` (checked above), and kb blocks
            // of each activation row.
            if let Some(tile) = &mut tile {
                unsafe { W::fill(tile, w) };
                for r in 0..m {
                    dst(r, col, &unsafe { tile.0.dot8(x(r), xsum.as_ptr().wrapping_add(r * kb)) });
                }
                continue;
            }
            let mut r = 0;
            while r < m {
                match m - r {
                    1 => unsafe { W::dot4(w, kb, [x(r)]) }.iter().for_each(|o| dst(r, col, o)),
                    2 => unsafe { W::dot4(w, kb, [x(r), x(r + 1)]) }.iter().enumerate().for_each(|(i, o)| dst(r + i, col, o)),
                    3 => unsafe { W::dot4(w, kb, [x(r), x(r + 1), x(r + 2)]) }.iter().enumerate().for_each(|(i, o)| dst(r + i, col, o)),
                    _ => unsafe { W::dot4(w, kb, [x(r), x(r + 1), x(r + 2), x(r + 3)]) }.iter().enumerate().for_each(|(i, o)| dst(r + i, col, o)),
                }
                r += 4;
            }
        }
        // The rows that do not fill a group, on the last thread.
        if t == threads - 1 {
            for c in groups * group..n {
                for r in 0..m {
                    let v = dot_ref(&rhs[c * kb..(c + 1) * kb], &xq[r * kb..(r + 1) * kb]);
                    // SAFETY: as above; no other thread owns these columns.
                    unsafe { *(dst_addr as *mut f32).add(r * n + c) = v };
                }
            }
        }
    });
}

/// The sum of a Q8_0 block's 32 values.
fn block_sum(b: &BlockQ8_0) -> i32 {
    // SAFETY: a Q8_0 block is its f16 scale followed by 32 signed bytes
    // (`repr(C)`, the GGUF layout the kernels read throughout).
    let qs = unsafe { std::slice::from_raw_parts((b as *const BlockQ8_0 as *const i8).add(2), 32) };
    qs.iter().map(|&q| i32::from(q)).sum()
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

/// Eight weight rows unpacked for prompt processing (see [`Weight::fill`]).
pub(crate) struct Tile(imp::Tile);

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod imp {
    use std::arch::x86_64::*;

    use candle_core::quantized::k_quants::{BlockQ5_0, BlockQ8_0};

    /// How a block becomes 32 signed bytes and its scale. Every block starts
    /// with its f16 scale.
    pub(super) trait Unpack {
        const SIZE: usize;
        /// # Safety
        /// `p` points at one block; AVX2 is enabled.
        unsafe fn values(p: *const u8) -> __m256i;
    }

    pub(super) struct Q8;
    pub(super) struct Q5;

    impl Unpack for Q8 {
        const SIZE: usize = std::mem::size_of::<BlockQ8_0>();
        #[inline(always)]
        unsafe fn values(p: *const u8) -> __m256i {
            // SAFETY: 32 value bytes follow the 2-byte scale.
            unsafe { _mm256_loadu_si256(p.add(2) as *const __m256i) }
        }
    }

    impl Unpack for Q5 {
        const SIZE: usize = std::mem::size_of::<BlockQ5_0>();
        /// Layout: f16 d, u32 qh (bit j is the fifth bit of value j), 16
        /// bytes whose low nibbles are values 0..16 and high nibbles 16..32.
        #[inline(always)]
        unsafe fn values(p: *const u8) -> __m256i {
            // SAFETY: the block is 22 bytes: 2 + 4 + 16.
            unsafe {
                let qh = std::ptr::read_unaligned(p.add(2) as *const u32);
                let qs = _mm_loadu_si128(p.add(6) as *const __m128i);
                let nibbles = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(qs), _mm_srli_epi16(qs, 4), 1), _mm256_set1_epi8(0x0F));
                // Byte j of `bits` is 0xFF when bit j of qh is set: spread
                // qh's byte j/8 to byte j, then test bit j%8.
                let spread =
                    _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
                let bits = _mm256_cmpeq_epi8(_mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe)), _mm256_set1_epi8(-1));
                // value = nibble + 16·bit - 16: with the bit set that is the
                // nibble; without it, nibble - 16 = nibble | 0xF0 as a byte.
                _mm256_or_si256(nibbles, _mm256_andnot_si256(bits, _mm256_set1_epi8(0xF0u8 as i8)))
            }
        }
    }

    /// Eight weight rows of kb blocks, unpacked so that one activation block
    /// meets all eight rows with no unpacking and their eight sums come out
    /// in one vector; with the scales as f32 (`scale[b·8 + r]`).
    ///
    /// Two layouts. Where the CPU has AVX-VNNI (Intel since Alder Lake and
    /// Sapphire Rapids, AMD since Zen 4), `inter` holds per block eight
    /// vectors, vector j carrying bytes 4j..4j+4 of row r in lane r, offset
    /// by 128 to make them unsigned: `vpdpbusd` with the activation's dword j
    /// broadcast then adds four products per row into that row's lane, and
    /// no horizontal sums are needed. Otherwise `val` and `abs` hold each
    /// row's values and their absolute values for AVX2's
    /// `maddubs`/`madd` pairs, summed across lanes per block.
    pub(crate) struct Tile {
        kb: usize,
        vnni: bool,
        inter: Vec<__m256i>,
        val: Vec<__m256i>,
        abs: Vec<__m256i>,
        scale: Vec<f32>,
    }

    impl Tile {
        /// Whether tiles use the VNNI layout on this CPU.
        pub(super) fn vnni() -> bool {
            is_x86_feature_detected!("avxvnni")
        }

        /// `vnni` only where [`Tile::vnni`] says so.
        pub(super) fn new(kb: usize, vnni: bool) -> Self {
            // SAFETY: AVX is enabled for this build.
            let zero = unsafe { _mm256_setzero_si256() };
            let (inter, val, abs) = if vnni { (vec![zero; 8 * kb], Vec::new(), Vec::new()) } else { (Vec::new(), vec![zero; 8 * kb], vec![zero; 8 * kb]) };
            Self { kb, vnni, inter, val, abs, scale: vec![0.0; 8 * kb] }
        }

        /// # Safety
        /// `w` points at 8·kb blocks of `U`.
        pub(super) unsafe fn fill<U: Unpack>(&mut self, w: *const u8) {
            let kb = self.kb;
            let inter = self.inter.as_mut_ptr() as *mut u32;
            for r in 0..8 {
                for b in 0..kb {
                    let i = b * 8 + r;
                    // SAFETY: block (r, b) is in bounds per the contract;
                    // `inter` holds 8·kb vectors of 8 dwords when `vnni`.
                    unsafe {
                        let p = w.add((r * kb + b) * U::SIZE);
                        let v = U::values(p);
                        if self.vnni {
                            let mut dw = [0u32; 8];
                            _mm256_storeu_si256(dw.as_mut_ptr() as *mut __m256i, _mm256_xor_si256(v, _mm256_set1_epi8(0x80u8 as i8)));
                            for (j, d) in dw.into_iter().enumerate() {
                                *inter.add((b * 8 + j) * 8 + r) = d;
                            }
                        } else {
                            self.val[i] = v;
                            self.abs[i] = _mm256_sign_epi8(v, v);
                        }
                        self.scale[i] = scale(p);
                    }
                }
            }
        }

        /// The eight rows' dot products with the kb Q8_0 blocks at `x`;
        /// `xsum` holds those blocks' sums of values (read only with VNNI).
        ///
        /// # Safety
        /// `x` points at kb blocks, and with VNNI `xsum` at kb sums.
        pub(super) unsafe fn dot8(&self, x: *const BlockQ8_0, xsum: *const i32) -> [f32; 8] {
            // SAFETY: `vnni` was read from the CPU; forwarded contract.
            if self.vnni { unsafe { self.dot8_vnni(x, xsum) } } else { unsafe { self.dot8_avx2(x) } }
        }

        #[target_feature(enable = "avxvnni")]
        unsafe fn dot8_vnni(&self, x: *const BlockQ8_0, xsum: *const i32) -> [f32; 8] {
            let x = x as *const u8;
            let xs = std::mem::size_of::<BlockQ8_0>();
            // SAFETY: x holds kb blocks and xsum kb sums; the tile holds 8·kb
            // vectors and scales.
            unsafe {
                let mut acc = _mm256_setzero_ps();
                let w = self.inter.as_ptr();
                for b in 0..self.kb {
                    let xb = x.add(b * xs);
                    let q = xb.add(2) as *const i32;
                    let wb = w.add(b * 8);
                    // Two chains, so that each vpdpbusd need not wait for
                    // the one before.
                    let mut s0 = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), *wb, _mm256_set1_epi32(std::ptr::read_unaligned(q)));
                    let mut s1 = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), *wb.add(1), _mm256_set1_epi32(std::ptr::read_unaligned(q.add(1))));
                    for j in (2..8).step_by(2) {
                        s0 = _mm256_dpbusd_avx_epi32(s0, *wb.add(j), _mm256_set1_epi32(std::ptr::read_unaligned(q.add(j))));
                        s1 = _mm256_dpbusd_avx_epi32(s1, *wb.add(j + 1), _mm256_set1_epi32(std::ptr::read_unaligned(q.add(j + 1))));
                    }
                    // Σ (w+128)·x = Σ w·x + 128·Σ x
                    let sums = _mm256_sub_epi32(_mm256_add_epi32(s0, s1), _mm256_set1_epi32(128 * *xsum.add(b)));
                    let scales = _mm256_mul_ps(_mm256_loadu_ps(self.scale.as_ptr().add(b * 8)), _mm256_set1_ps(scale(xb)));
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scales, acc);
                }
                let mut out = [0f32; 8];
                _mm256_storeu_ps(out.as_mut_ptr(), acc);
                out
            }
        }

        unsafe fn dot8_avx2(&self, x: *const BlockQ8_0) -> [f32; 8] {
            let x = x as *const u8;
            let xs = std::mem::size_of::<BlockQ8_0>();
            // SAFETY: x holds kb blocks; the tile's vectors hold 8·kb entries.
            unsafe {
                let ones = _mm256_set1_epi16(1);
                let mut acc = _mm256_setzero_ps();
                for b in 0..self.kb {
                    let xb = x.add(b * xs);
                    let xv = Q8::values(xb);
                    let p = |r: usize| {
                        let i = b * 8 + r;
                        _mm256_madd_epi16(_mm256_maddubs_epi16(self.abs[i], _mm256_sign_epi8(xv, self.val[i])), ones)
                    };
                    // Pairwise sums leave row r's total in lane r.
                    let h01 = _mm256_hadd_epi32(p(0), p(1));
                    let h23 = _mm256_hadd_epi32(p(2), p(3));
                    let h45 = _mm256_hadd_epi32(p(4), p(5));
                    let h67 = _mm256_hadd_epi32(p(6), p(7));
                    let h0123 = _mm256_hadd_epi32(h01, h23);
                    let h4567 = _mm256_hadd_epi32(h45, h67);
                    let sums = _mm256_add_epi32(_mm256_permute2x128_si256(h0123, h4567, 0x20), _mm256_permute2x128_si256(h0123, h4567, 0x31));
                    let scales = _mm256_mul_ps(_mm256_loadu_ps(self.scale.as_ptr().add(b * 8)), _mm256_set1_ps(scale(xb)));
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scales, acc);
                }
                let mut out = [0f32; 8];
                _mm256_storeu_ps(out.as_mut_ptr(), acc);
                out
            }
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
        // SAFETY: every block starts with its f16 scale.
        half::f16::from_bits(unsafe { std::ptr::read_unaligned(p as *const u16) }).to_f32()
    }

    /// # Safety
    /// `w` points at 4·kb blocks of `U` and each `x` at kb Q8_0 blocks.
    #[inline(always)]
    pub(super) unsafe fn dot4<U: Unpack, const R: usize>(w: *const u8, kb: usize, x: [*const BlockQ8_0; R]) -> [[f32; 4]; R] {
        let xs = std::mem::size_of::<BlockQ8_0>();
        // SAFETY: pointers valid per the contract; AVX2/FMA are enabled for
        // this build (the module is compiled only then).
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let mut acc = [_mm_setzero_ps(); R];
            // The hardware prefetcher alone leaves a single thread at about
            // 60 % of its read bandwidth on the output head; asking for the
            // same block of the next four rows measured 20-30 % faster decoding.
            let ahead = 4 * kb * U::SIZE;
            for b in 0..kb {
                let wb: [*const u8; 4] = std::array::from_fn(|r| w.add((r * kb + b) * U::SIZE));
                let wv: [__m256i; 4] = std::array::from_fn(|r| {
                    // A prefetch past the end of the matrix is harmless.
                    _mm_prefetch::<_MM_HINT_T0>(wb[r].wrapping_add(ahead) as *const i8);
                    U::values(wb[r])
                });
                let aw: [__m256i; 4] = std::array::from_fn(|r| _mm256_sign_epi8(wv[r], wv[r]));
                let ws = _mm_set_ps(scale(wb[3]), scale(wb[2]), scale(wb[1]), scale(wb[0]));
                for (a, &xr) in acc.iter_mut().zip(&x) {
                    let xb = (xr as *const u8).add(b * xs);
                    let xv = Q8::values(xb);
                    // |w| · (x with w's sign): unsigned × signed pairs, as ggml does.
                    let p = |r: usize| _mm256_madd_epi16(_mm256_maddubs_epi16(aw[r], _mm256_sign_epi8(xv, wv[r])), ones);
                    // Each weight row's exact integer sum for the block, then
                    // one fused multiply-add per row: the arithmetic of `dot8`
                    // and `dot_ref`.
                    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(p(0), p(1)), _mm256_hadd_epi32(p(2), p(3)));
                    let sums = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
                    *a = _mm_fmadd_ps(_mm_cvtepi32_ps(sums), _mm_mul_ps(ws, _mm_set1_ps(scale(xb))), *a);
                }
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

    pub(super) trait Unpack {}
    pub(super) struct Q8;
    pub(super) struct Q5;
    impl Unpack for Q8 {}
    impl Unpack for Q5 {}

    /// Called only with an empty slice: `AVAILABLE` is false in this build.
    pub(super) unsafe fn gelu8(xs: &mut [f32]) {
        assert!(xs.is_empty(), "gelu8 needs AVX2");
    }

    /// Never built: `AVAILABLE` is false in this build.
    pub(crate) struct Tile;

    impl Tile {
        pub(super) fn new(_kb: usize, _vnni: bool) -> Self {
            unreachable!("matmul asserts AVAILABLE")
        }
        pub(super) unsafe fn fill<U: Unpack>(&mut self, _w: *const u8) {
            unreachable!("matmul asserts AVAILABLE")
        }
        pub(super) unsafe fn dot8(&self, _x: *const BlockQ8_0, _xsum: *const i32) -> [f32; 8] {
            unreachable!("matmul asserts AVAILABLE")
        }
        pub(super) fn vnni() -> bool {
            false
        }
    }

    /// Never called: `AVAILABLE` is false in this build.
    pub(super) unsafe fn dot4<U: Unpack, const R: usize>(_w: *const u8, _kb: usize, _x: [*const BlockQ8_0; R]) -> [[f32; 4]; R] {
        unreachable!("matmul asserts AVAILABLE")
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::k_quants::{BlockQ5_0, BlockQ8_0};
    use candle_core::quantized::{GgmlDType, GgmlType, QTensor};
    use candle_core::{Device, Tensor};

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

    #[test]
    fn matches_candle_on_odd_shapes() {
        if !super::AVAILABLE {
            return;
        }
        let dev = Device::Cpu;
        // Both prompt tiles where this CPU has VNNI; the AVX2 one everywhere.
        let tiles = if super::imp::Tile::vnni() { vec![false, true] } else { vec![false] };
        for (dtype, vnni) in [GgmlDType::Q8_0, GgmlDType::Q5_0].into_iter().flat_map(|d| tiles.iter().map(move |&v| (d, v))) {
            for (m, k, n) in [(1, 640, 262), (3, 128, 9), (5, 2048, 17), (7, 640, 43), (2, 64, 8)] {
                let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
                let q = QTensor::quantize(&w, dtype).unwrap();
                let bytes = q.data().unwrap().to_vec();
                let want = candle_core::quantized::QMatMul::from_qtensor(q).unwrap();
                let want = candle_core::Module::forward(&want, &x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let mut got = vec![0f32; m * n];
                match dtype {
                    GgmlDType::Q8_0 => super::matmul_with::<BlockQ8_0>(vnni, m, k, n, &x, &crate::gguf::blocks_from_bytes(&bytes), &mut got),
                    _ => super::matmul_with::<BlockQ5_0>(vnni, m, k, n, &x, &crate::gguf::blocks_from_bytes(&bytes), &mut got),
                }
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "{dtype:?} vnni {vnni} {m}x{k}x{n}: {a} vs {b}");
                }
            }
        }
    }

    /// Every path gives every row exactly the scalar reference's result, so a
    /// row's logits do not depend on how many rows were multiplied with it.
    #[test]
    fn every_row_equals_the_scalar_reference_bit_for_bit_whatever_the_row_count() {
        if !super::AVAILABLE {
            return;
        }
        fn check<W: super::Weight>(dtype: GgmlDType, vnni: bool) {
            let dev = Device::Cpu;
            for (k, n) in [(640, 262), (128, 9), (2048, 17), (64, 8), (96, 43)] {
                let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
                let q = QTensor::quantize(&w, dtype).unwrap();
                let blocks: Vec<W> = crate::gguf::blocks_from_bytes(&q.data().unwrap());
                let kb = k / 32;
                let x = Tensor::randn(0f32, 1.0, (9, k), &dev).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let mut want = vec![0f32; 9 * n];
                for r in 0..9 {
                    let mut xq: Vec<BlockQ8_0> = (0..kb).map(|_| BlockQ8_0::zeros()).collect();
                    BlockQ8_0::from_float(&x[r * k..(r + 1) * k], &mut xq);
                    for c in 0..n {
                        want[r * n + c] = super::dot_ref(&blocks[c * kb..(c + 1) * kb], &xq);
                    }
                }
                for m in [1, 2, 3, 4, 5, 8, 9] {
                    let mut got = vec![0f32; m * n];
                    super::matmul_with::<W>(vnni, m, k, n, &x[..m * k], &blocks, &mut got);
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(a.to_bits(), b.to_bits(), "{dtype:?} vnni {vnni} m {m} k {k} n {n}: row {} column {}: {a} vs {b}", i / n, i % n);
                    }
                }
            }
        }
        let tiles = if super::imp::Tile::vnni() { vec![false, true] } else { vec![false] };
        for vnni in tiles {
            check::<BlockQ8_0>(GgmlDType::Q8_0, vnni);
            check::<BlockQ5_0>(GgmlDType::Q5_0, vnni);
        }
    }
}
