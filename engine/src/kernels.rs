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
    /// Dot products of four consecutive weight rows (each `kb` blocks) with `x`.
    ///
    /// # Safety
    /// `w` must point at 4·kb blocks and `x` at kb blocks; [`AVAILABLE`].
    unsafe fn dot4(w: *const Self, kb: usize, x: *const BlockQ8_0) -> [f32; 4];

    /// Whether [`widen`](Self::widen) pays for itself when several
    /// activation rows reuse the same weight rows (prompt processing).
    const WIDEN: bool;

    /// Rewrites `w` as Q8_0 blocks with the same values and scales.
    ///
    /// # Safety
    /// `w` must point at `out.len()` blocks; [`AVAILABLE`].
    unsafe fn widen(w: *const Self, out: &mut [BlockQ8_0]);
}

impl Weight for BlockQ8_0 {
    unsafe fn dot4(w: *const Self, kb: usize, x: *const BlockQ8_0) -> [f32; 4] {
        // SAFETY: forwarded contract.
        unsafe { imp::dot4::<imp::Q8>(w as *const u8, kb, x) }
    }

    const WIDEN: bool = false;

    unsafe fn widen(w: *const Self, out: &mut [BlockQ8_0]) {
        // SAFETY: forwarded contract; same type.
        unsafe { std::ptr::copy_nonoverlapping(w, out.as_mut_ptr(), out.len()) }
    }
}

impl Weight for BlockQ5_0 {
    unsafe fn dot4(w: *const Self, kb: usize, x: *const BlockQ8_0) -> [f32; 4] {
        // SAFETY: forwarded contract.
        unsafe { imp::dot4::<imp::Q5>(w as *const u8, kb, x) }
    }

    const WIDEN: bool = true;

    unsafe fn widen(w: *const Self, out: &mut [BlockQ8_0]) {
        // SAFETY: forwarded contract.
        unsafe { imp::widen::<imp::Q5>(w as *const u8, out) }
    }
}

/// `dst (m×n) = lhs (m×k) · rhs (n×k)ᵀ` with `rhs` in blocks of 32.
///
/// # Panics
/// On mismatched lengths (the callers, candle's matmul dispatch, check them).
pub(crate) fn matmul<W: Weight>(m: usize, k: usize, n: usize, lhs: &[f32], rhs: &[W], dst: &mut [f32]) {
    assert!(AVAILABLE && k.is_multiple_of(32) && lhs.len() == m * k && rhs.len() == n * (k / 32) && dst.len() >= m * n);
    let kb = k / 32;
    let mut xq: Vec<BlockQ8_0> = (0..m * kb).map(|_| BlockQ8_0::zeros()).collect();
    for r in 0..m {
        BlockQ8_0::from_float(&lhs[r * k..(r + 1) * k], &mut xq[r * kb..(r + 1) * kb]);
    }
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    let quads = n.div_ceil(4);
    let per = quads.div_ceil(threads);
    let dst_addr = dst.as_mut_ptr() as usize;
    let xq = &xq;
    // With several activation rows, weights that need unpacking are widened
    // to Q8_0 once per four rows instead of once per activation row.
    let widen = W::WIDEN && m > 1;
    pool.execute(|t| {
        let (q0, q1) = ((t * per).min(quads), ((t + 1) * per).min(quads));
        let mut wide: Vec<BlockQ8_0> = if widen { (0..4 * kb).map(|_| BlockQ8_0::zeros()).collect() } else { Vec::new() };
        for q in q0..q1 {
            let col = q * 4;
            let cols = (n - col).min(4);
            if widen && cols == 4 {
                // SAFETY: 4·kb blocks from `col` lie inside `rhs` (checked above).
                unsafe { W::widen(rhs[col * kb..].as_ptr(), &mut wide) };
            }
            for r in 0..m {
                let x = &xq[r * kb..(r + 1) * kb];
                let mut out = [0f32; 4];
                if cols == 4 {
                    // SAFETY: the kernel reads 4 rows of kb blocks starting
                    // at `col`, inside `rhs` (checked above) or `wide`, and
                    // `x` has kb blocks.
                    out = unsafe {
                        if widen {
                            BlockQ8_0::dot4(wide.as_ptr(), kb, x.as_ptr())
                        } else {
                            W::dot4(rhs[col * kb..].as_ptr(), kb, x.as_ptr())
                        }
                    };
                } else {
                    for (c, o) in out.iter_mut().enumerate().take(cols) {
                        *o = W::vec_dot_unopt(k, &rhs[(col + c) * kb..(col + c + 1) * kb], x);
                    }
                }
                // SAFETY: each (row, column) of dst is written by exactly one
                // thread: threads own disjoint column ranges.
                unsafe {
                    let d = (dst_addr as *mut f32).add(r * n + col);
                    std::ptr::copy_nonoverlapping(out.as_ptr(), d, cols);
                }
            }
        }
    });
}

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
                let nibbles = _mm256_and_si256(
                    _mm256_inserti128_si256(_mm256_castsi128_si256(qs), _mm_srli_epi16(qs, 4), 1),
                    _mm256_set1_epi8(0x0F),
                );
                // Byte j of `bits` is 0xFF when bit j of qh is set: spread
                // qh's byte j/8 to byte j, then test bit j%8.
                let spread = _mm256_shuffle_epi8(
                    _mm256_set1_epi32(qh as i32),
                    _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0),
                );
                let bits = _mm256_cmpeq_epi8(
                    _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe)),
                    _mm256_set1_epi8(-1),
                );
                // value = nibble + 16·bit - 16: with the bit set that is the
                // nibble; without it, nibble - 16 = nibble | 0xF0 as a byte.
                _mm256_or_si256(nibbles, _mm256_andnot_si256(bits, _mm256_set1_epi8(0xF0u8 as i8)))
            }
        }
    }

    /// # Safety
    /// `w` points at `out.len()` blocks of `U`.
    pub(super) unsafe fn widen<U: Unpack>(w: *const u8, out: &mut [BlockQ8_0]) {
        let size = std::mem::size_of::<BlockQ8_0>();
        let dst = out.as_mut_ptr() as *mut u8;
        for i in 0..out.len() {
            // SAFETY: block i of each side is in bounds; a Q8_0 block is
            // the f16 scale then 32 bytes.
            unsafe {
                let (src, o) = (w.add(i * U::SIZE), dst.add(i * size));
                std::ptr::copy_nonoverlapping(src, o, 2);
                _mm256_storeu_si256(o.add(2) as *mut __m256i, U::values(src));
            }
        }
    }

    #[inline(always)]
    unsafe fn scale(p: *const u8) -> f32 {
        // SAFETY: every block starts with its f16 scale.
        half::f16::from_bits(unsafe { std::ptr::read_unaligned(p as *const u16) }).to_f32()
    }

    /// # Safety
    /// `w` points at 4·kb blocks of `U` and `x` at kb Q8_0 blocks.
    #[inline(always)]
    pub(super) unsafe fn dot4<U: Unpack>(w: *const u8, kb: usize, x: *const BlockQ8_0) -> [f32; 4] {
        let x = x as *const u8;
        let xs = std::mem::size_of::<BlockQ8_0>();
        // SAFETY: pointers valid per the contract; AVX2/FMA are enabled for
        // this build (the module is compiled only then).
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let mut acc = [_mm256_setzero_ps(); 4];
            // The hardware prefetcher alone leaves a single thread at about
            // 60 % of its read bandwidth on the output head; asking for the
            // same block of the next four rows measured 20-30 % faster decoding.
            let ahead = 4 * kb * U::SIZE;
            for b in 0..kb {
                let xb = x.add(b * xs);
                let xv = Q8::values(xb);
                let xd = scale(xb);
                for (r, a) in acc.iter_mut().enumerate() {
                    let wb = w.add((r * kb + b) * U::SIZE);
                    // A prefetch past the end of the matrix is harmless.
                    _mm_prefetch::<_MM_HINT_T0>(wb.wrapping_add(ahead) as *const i8);
                    let wv = U::values(wb);
                    // |w| · (x with w's sign): unsigned × signed pairs, as ggml does.
                    let aw = _mm256_sign_epi8(wv, wv);
                    let sx = _mm256_sign_epi8(xv, wv);
                    let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones);
                    let s = _mm256_set1_ps(scale(wb) * xd);
                    *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(prod), s, *a);
                }
            }
            acc.map(|a| hsum(a))
        }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: AVX is enabled for this build.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
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

    /// Never called: `AVAILABLE` is false in this build.
    pub(super) unsafe fn widen<U: Unpack>(_w: *const u8, _out: &mut [BlockQ8_0]) {
        unreachable!("matmul asserts AVAILABLE")
    }

    /// Never called: `AVAILABLE` is false in this build.
    pub(super) unsafe fn dot4<U: Unpack>(_w: *const u8, _kb: usize, _x: *const BlockQ8_0) -> [f32; 4] {
        unreachable!("matmul asserts AVAILABLE")
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::k_quants::{BlockQ5_0, BlockQ8_0};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_candle_on_odd_shapes() {
        if !super::AVAILABLE {
            return;
        }
        let dev = Device::Cpu;
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q5_0] {
            for (m, k, n) in [(1, 640, 262), (3, 128, 9), (5, 2048, 17)] {
                let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
                let q = QTensor::quantize(&w, dtype).unwrap();
                let bytes = q.data().unwrap().to_vec();
                let want = candle_core::quantized::QMatMul::from_qtensor(q).unwrap();
                let want = candle_core::Module::forward(&want, &x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let mut got = vec![0f32; m * n];
                match dtype {
                    GgmlDType::Q8_0 => super::matmul::<BlockQ8_0>(m, k, n, &x, &crate::gguf::blocks_from_bytes(&bytes), &mut got),
                    _ => super::matmul::<BlockQ5_0>(m, k, n, &x, &crate::gguf::blocks_from_bytes(&bytes), &mut got),
                }
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "{dtype:?} {m}x{k}x{n}: {a} vs {b}");
                }
            }
        }
    }
}
