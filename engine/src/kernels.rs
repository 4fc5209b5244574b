//! CPU matrix products for Q8_0 weights, faster than candle's generic path.
//!
//! candle multiplies Q8_0 rows one at a time with a single accumulator, so
//! the loop waits on each fused multiply-add; when the inner dimension is
//! not a multiple of 256 (Gemma 3 270M's 640) its repacked kernels do not
//! apply either, and the 262 144-row output head spent most of decoding
//! there. Here four weight rows share each activation block and keep four
//! independent accumulators. Activations are quantized by candle's own
//! Q8_0 routine and the integer dot products are the same, so results equal
//! candle's up to float summation order.

use candle_core::quantized::GgmlType;
use candle_core::quantized::k_quants::BlockQ8_0;

/// Whether this build has the kernel (x86-64 with AVX2, which the release
/// baseline x86-64-v3 guarantees).
pub(crate) const AVAILABLE: bool = cfg!(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"));

/// `dst (m×n) = lhs (m×k) · rhs (n×k)ᵀ` with `rhs` in Q8_0 blocks.
///
/// # Panics
/// On mismatched lengths (the callers, candle's matmul dispatch, check them).
pub(crate) fn matmul_q8_0(m: usize, k: usize, n: usize, lhs: &[f32], rhs: &[BlockQ8_0], dst: &mut [f32]) {
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
    pool.execute(|t| {
        let (q0, q1) = ((t * per).min(quads), ((t + 1) * per).min(quads));
        for q in q0..q1 {
            let col = q * 4;
            let cols = (n - col).min(4);
            for r in 0..m {
                let x = &xq[r * kb..(r + 1) * kb];
                let mut out = [0f32; 4];
                if cols == 4 {
                    // SAFETY: the kernel reads 4 rows of kb blocks starting
                    // at `col`, inside `rhs` (checked above), and `x` has kb blocks.
                    out = unsafe { imp::dot4(rhs[col * kb..].as_ptr(), kb, x.as_ptr()) };
                } else {
                    for (c, o) in out.iter_mut().enumerate().take(cols) {
                        *o = BlockQ8_0::vec_dot(k, &rhs[(col + c) * kb..(col + c + 1) * kb], x);
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

    use candle_core::quantized::k_quants::BlockQ8_0;

    /// The layout of candle's `BlockQ8_0` (`#[repr(C)]`, 34 bytes).
    #[repr(C)]
    struct Block {
        d: u16,
        qs: [i8; 32],
    }
    const _: () = assert!(std::mem::size_of::<Block>() == std::mem::size_of::<BlockQ8_0>());

    #[inline(always)]
    fn scale(b: &Block) -> f32 {
        half::f16::from_bits(b.d).to_f32()
    }

    /// Dot products of four consecutive weight rows (each `kb` blocks) with `x`.
    ///
    /// # Safety
    /// `w` must point at 4·kb blocks and `x` at kb blocks.
    pub(super) unsafe fn dot4(w: *const BlockQ8_0, kb: usize, x: *const BlockQ8_0) -> [f32; 4] {
        let w = w as *const Block;
        let x = x as *const Block;
        // SAFETY: pointers valid per the contract; AVX2/FMA are enabled for
        // this build (the module is compiled only then).
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let mut acc = [_mm256_setzero_ps(); 4];
            for b in 0..kb {
                let xb = &*x.add(b);
                let xv = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
                let xd = scale(xb);
                for (r, a) in acc.iter_mut().enumerate() {
                    let wb = &*w.add(r * kb + b);
                    let wv = _mm256_loadu_si256(wb.qs.as_ptr() as *const __m256i);
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

    /// Never called: `AVAILABLE` is false in this build.
    pub(super) unsafe fn dot4(_w: *const BlockQ8_0, _kb: usize, _x: *const BlockQ8_0) -> [f32; 4] {
        unreachable!("matmul_q8_0 asserts AVAILABLE")
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_candle_on_odd_shapes() {
        if !super::AVAILABLE {
            return;
        }
        let dev = Device::Cpu;
        for (m, k, n) in [(1, 640, 262), (3, 96, 9), (5, 2048, 17)] {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
            let blocks = crate::gguf::blocks_from_bytes(&q.data().unwrap());
            let want = candle_core::quantized::QMatMul::from_qtensor(q).unwrap();
            let want = candle_core::Module::forward(&want, &x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut got = vec![0f32; m * n];
            super::matmul_q8_0(m, k, n, &x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), &blocks, &mut got);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "{m}x{k}x{n}: {a} vs {b}");
            }
        }
    }
}
