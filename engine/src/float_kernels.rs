//! CPU matrix products for weights stored as floats — F16, BF16 and F32 —
//! read in place from the mapped file.
//!
//! candle turns such weights into an f32 copy when they are loaded (twice
//! the memory of an F16 file, and every decoded token reads twice the
//! bytes) and multiplies with a general matrix product whose summation
//! order depends on the row count. Here each weight value is widened to f32
//! as it is read (exactly: every f16 and bf16 is an f32) and meets the f32
//! activations, and every dot product sums the same way whatever runs with
//! it ([`dot_ref`]): sixteen partial sums, value `i` going to sum `i mod 16`
//! by a fused multiply-add in order (the row padded with zeros to a
//! multiple of sixteen), then sums `j` and `j + 8` added, then those eight
//! in a fixed tree. AVX2 keeps the sixteen sums in two 256-bit registers,
//! AVX-512 in one 512-bit register and the portable path in an array: all
//! give the same bits, so a token's result does not depend on the CPU's
//! instructions, the row count or the thread count.
//!
//! Decoding (a few activation rows) widens eight weight rows at a time
//! straight from the file; a prompt widens them once into an f32 tile that
//! every activation row then meets.

use candle_core::quantized::{GgmlDType, QTensor};
use half::{bf16, f16};

/// A float type weights are stored as.
pub(crate) trait Elem: candle_core::quantized::GgmlType + Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// Widens `src` into `dst` (the same length).
    fn widen(src: &[Self], dst: &mut [f32]);
    /// Eight values from `p` widened into a vector.
    ///
    /// # Safety
    /// `p` points at eight values.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    unsafe fn ld8(p: *const Self) -> std::arch::x86_64::__m256;
    /// Sixteen values from `p` widened into a vector.
    ///
    /// # Safety
    /// `p` points at sixteen values; AVX-512F runs here.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    unsafe fn ld16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl Elem for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn widen(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    #[inline(always)]
    unsafe fn ld8(p: *const Self) -> std::arch::x86_64::__m256 {
        unsafe { imp::f16x8(p) }
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    #[inline(always)]
    unsafe fn ld16(p: *const Self) -> std::arch::x86_64::__m512 {
        unsafe { imp::f16x16(p) }
    }
}

impl Elem for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn widen(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits(u32::from(s.to_bits()) << 16);
        }
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    #[inline(always)]
    unsafe fn ld8(p: *const Self) -> std::arch::x86_64::__m256 {
        unsafe { imp::bf16x8(p) }
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    #[inline(always)]
    unsafe fn ld16(p: *const Self) -> std::arch::x86_64::__m512 {
        unsafe { imp::bf16x16(p) }
    }
}

impl Elem for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn widen(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    #[inline(always)]
    unsafe fn ld8(p: *const Self) -> std::arch::x86_64::__m256 {
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    #[inline(always)]
    unsafe fn ld16(p: *const Self) -> std::arch::x86_64::__m512 {
        unsafe { imp::f32x16(p) }
    }
}

/// Whether the kernels here multiply weights of this type.
pub(crate) fn covers(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::F16 | GgmlDType::BF16 | GgmlDType::F32)
}

/// Partial sums per dot product.
const LANES: usize = 16;

/// Weight rows per kernel call (and per tile).
const GROUP: usize = 8;

/// Up to this many activation rows meet the weights as stored; more meet a
/// tile widened once (a prompt).
const DECODE_ROWS: usize = 8;

/// The dot product every path computes, one value at a time.
pub(crate) fn dot_ref<E: Elem>(w: &[E], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len());
    let mut p = [0f32; LANES];
    for (wc, xc) in w.chunks(LANES).zip(x.chunks(LANES)) {
        for (l, p) in p.iter_mut().enumerate() {
            let (a, b) = if l < wc.len() { (wc[l].to_f32(), xc[l]) } else { (0.0, 0.0) };
            *p = a.mul_add(b, *p);
        }
    }
    reduce(p)
}

/// The sixteen partial sums' total: `j + (j + 8)`, then as the halves of a
/// 128-bit register, then its two lanes.
fn reduce(p: [f32; LANES]) -> f32 {
    let s: [f32; 8] = std::array::from_fn(|j| p[j] + p[j + 8]);
    let q: [f32; 4] = std::array::from_fn(|j| s[j] + s[j + 4]);
    let r = [q[0] + q[2], q[1] + q[3]];
    r[0] + r[1]
}

/// The instructions the kernels use, picked at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// Plain Rust (any CPU).
    Portable,
    /// AVX2, FMA and F16C (every x86-64-v3 CPU).
    #[cfg_attr(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c")), allow(dead_code))]
    Avx2,
    /// AVX-512 (Intel since Skylake-SP, AMD since Zen 4).
    #[cfg_attr(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c")), allow(dead_code))]
    Avx512,
}

impl Isa {
    /// Every one this CPU runs, best last.
    pub(crate) fn supported() -> Vec<Self> {
        #[allow(unused_mut)]
        let mut isas = vec![Isa::Portable];
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
        {
            isas.push(Isa::Avx2);
            if is_x86_feature_detected!("avx512f") {
                isas.push(Isa::Avx512);
            }
        }
        isas
    }

    fn best() -> Self {
        static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| Self::supported().pop().unwrap_or(Isa::Portable))
    }
}

/// `dst (m×n) = lhs (m×k) · rhs (n×k)ᵀ`.
///
/// # Panics
/// On mismatched lengths (the callers check them).
pub(crate) fn matmul<E: Elem>(m: usize, k: usize, n: usize, lhs: &[f32], rhs: &[E], dst: &mut [f32]) {
    matmul_with(Isa::best(), m, k, n, lhs, rhs, dst);
}

/// [`matmul`] with the given instructions (`isa` only one this CPU runs).
fn matmul_with<E: Elem>(isa: Isa, m: usize, k: usize, n: usize, lhs: &[f32], rhs: &[E], dst: &mut [f32]) {
    assert!(lhs.len() == m * k && rhs.len() == n * k && dst.len() >= m * n);
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    let groups = n / GROUP;
    let per = groups.div_ceil(threads);
    let dst_addr = dst.as_mut_ptr() as usize;
    let put = |r: usize, col: usize, out: &[f32]| {
        // SAFETY: each (row, column) of dst is written by exactly one
        // thread: threads own disjoint column ranges.
        unsafe { std::ptr::copy_nonoverlapping(out.as_ptr(), (dst_addr as *mut f32).add(r * n + col), out.len()) };
    };
    pool.execute(|t| {
        let (g0, g1) = ((t * per).min(groups), ((t + 1) * per).min(groups));
        let widened = isa == Isa::Portable || m > DECODE_ROWS;
        let mut tile = if widened && g1 > g0 { vec![0f32; GROUP * k] } else { Vec::new() };
        for g in g0..g1 {
            let col = g * GROUP;
            let w = &rhs[col * k..(col + GROUP) * k];
            if widened {
                E::widen(w, &mut tile);
            }
            let x = |r: usize| &lhs[r * k..(r + 1) * k];
            let mut r = 0;
            if widened {
                // Three activation rows share each load of the tile.
                while r + 3 <= m {
                    for (i, out) in dot_rows(isa, &tile, [x(r), x(r + 1), x(r + 2)]).iter().enumerate() {
                        put(r + i, col, out);
                    }
                    r += 3;
                }
            }
            for r in r..m {
                let [out] = if widened { dot_rows(isa, &tile, [x(r)]) } else { dot_rows(isa, w, [x(r)]) };
                put(r, col, &out);
            }
        }
        // The rows that do not fill a group, on the last thread.
        if t == threads - 1 {
            for c in groups * GROUP..n {
                for r in 0..m {
                    put(r, c, &[dot_ref(&rhs[c * k..(c + 1) * k], &lhs[r * k..(r + 1) * k])]);
                }
            }
        }
    });
}

/// The dot products of eight weight rows `w` (8×k) with `R` activation
/// rows.
fn dot_rows<E: Elem, const R: usize>(isa: Isa, w: &[E], x: [&[f32]; R]) -> [[f32; GROUP]; R] {
    let k = x[0].len();
    assert!(w.len() == GROUP * k && x.iter().all(|x| x.len() == k));
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    let rows: [*const E; GROUP] = std::array::from_fn(|r| w[r * k..].as_ptr());
    match isa {
        Isa::Portable => x.map(|x| std::array::from_fn(|r| dot_portable(&w[r * k..(r + 1) * k], x))),
        // SAFETY: `isa` is one this CPU runs (the callers pick from
        // `Isa::supported`); the lengths are checked above.
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
        Isa::Avx2 => x.map(|x| unsafe {
            let lo = imp::dot_avx2::<E, 4>(std::array::from_fn(|r| rows[r]), x.as_ptr(), k);
            let hi = imp::dot_avx2::<E, 4>(std::array::from_fn(|r| rows[r + 4]), x.as_ptr(), k);
            std::array::from_fn(|r| if r < 4 { lo[r] } else { hi[r - 4] })
        }),
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
        Isa::Avx512 => unsafe { imp::dot_avx512::<E, GROUP, R>(rows, x.map(<[f32]>::as_ptr), k) },
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c")))]
        _ => unreachable!("only the portable kernels are built"),
    }
}

/// [`dot_ref`] over widened values, sixteen at a time in an array the
/// compiler keeps in vector registers.
fn dot_portable<E: Elem>(w: &[E], x: &[f32]) -> f32 {
    let k = x.len();
    let full = k / LANES * LANES;
    let mut p = [0f32; LANES];
    let mut wf = [0f32; LANES];
    for i in (0..full).step_by(LANES) {
        E::widen(&w[i..i + LANES], &mut wf);
        for l in 0..LANES {
            p[l] = wf[l].mul_add(x[i + l], p[l]);
        }
    }
    if full < k {
        let mut xf = [0f32; LANES];
        wf = [0f32; LANES];
        E::widen(&w[full..], &mut wf[..k - full]);
        xf[..k - full].copy_from_slice(&x[full..]);
        for l in 0..LANES {
            p[l] = wf[l].mul_add(xf[l], p[l]);
        }
    }
    reduce(p)
}

/// `x · wᵀ` for a CPU weight of a type the kernels cover ([`covers`]), as a
/// candle op on the activations `x` (…, k) giving (…, n).
#[derive(Debug, Clone)]
pub(crate) struct FloatMatmul(pub(crate) std::sync::Arc<QTensor>);

impl candle_core::CustomOp1 for FloatMatmul {
    fn name(&self) -> &'static str {
        "rbee-float-matmul"
    }

    fn cpu_fwd(&self, storage: &candle_core::CpuStorage, layout: &candle_core::Layout) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        fn run<E: Elem>(m: usize, k: usize, n: usize, lhs: &[f32], data: &[u8], dst: &mut [f32]) -> candle_core::Result<()> {
            if data.len() != n * k * std::mem::size_of::<E>() {
                candle_core::bail!("a {n}x{k} weight has {} bytes", data.len())
            }
            crate::kernels::with_elements::<E>(data, |w| matmul(m, k, n, lhs, w, dst));
            Ok(())
        }
        crate::kernels::weight_op(&self.0, storage, layout, |m, k, n, lhs, data, dst| match self.0.dtype() {
            GgmlDType::F16 => run::<f16>(m, k, n, lhs, data, dst),
            GgmlDType::BF16 => run::<bf16>(m, k, n, lhs, data, dst),
            GgmlDType::F32 => run::<f32>(m, k, n, lhs, data, dst),
            other => candle_core::bail!("rbee's float kernels do not multiply {other:?}"),
        })
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
mod imp {
    use std::arch::x86_64::*;

    use half::{bf16, f16};

    use super::{Elem, LANES};

    /// Eight f16 values widened (F16C).
    #[inline(always)]
    pub(super) unsafe fn f16x8(p: *const f16) -> __m256 {
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }

    /// Sixteen f16 values widened.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn f16x16(p: *const f16) -> __m512 {
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }

    /// Eight bf16 values widened: each is an f32's top half.
    #[inline(always)]
    pub(super) unsafe fn bf16x8(p: *const bf16) -> __m256 {
        unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))) }
    }

    /// Sixteen bf16 values widened.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn bf16x16(p: *const bf16) -> __m512 {
        unsafe { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast())))) }
    }

    /// Sixteen f32 values.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn f32x16(p: *const f32) -> __m512 {
        unsafe { _mm512_loadu_ps(p) }
    }

    /// The last `k mod 16` values of a row (from `at`), widened and padded
    /// with zeros.
    #[inline(always)]
    unsafe fn tail<E: Elem>(p: *const E, at: usize, k: usize) -> [f32; LANES] {
        let mut out = [0f32; LANES];
        for (l, o) in out.iter_mut().enumerate().take(k - at) {
            // SAFETY: at + l < k, inside the row.
            *o = unsafe { *p.add(at + l) }.to_f32();
        }
        out
    }

    /// The sum of eight lanes in [`super::reduce`]'s order.
    #[inline(always)]
    unsafe fn reduce8(s: __m256) -> f32 {
        unsafe {
            let q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
            let r = _mm_add_ps(q, _mm_movehl_ps(q, q));
            _mm_cvtss_f32(_mm_add_ss(r, _mm_shuffle_ps::<1>(r, r)))
        }
    }

    /// Dot products of `W` weight rows with the activation row `x`, the
    /// sixteen partial sums of each in two 256-bit registers.
    ///
    /// # Safety
    /// Each `w[r]` and `x` point at `k` values.
    #[inline(always)]
    pub(super) unsafe fn dot_avx2<E: Elem, const W: usize>(w: [*const E; W], x: *const f32, k: usize) -> [f32; W] {
        unsafe {
            let mut lo = [_mm256_setzero_ps(); W];
            let mut hi = [_mm256_setzero_ps(); W];
            let full = k / LANES * LANES;
            let mut i = 0;
            while i < full {
                let (x0, x1) = (_mm256_loadu_ps(x.add(i)), _mm256_loadu_ps(x.add(i + 8)));
                for r in 0..W {
                    lo[r] = _mm256_fmadd_ps(E::ld8(w[r].add(i)), x0, lo[r]);
                    hi[r] = _mm256_fmadd_ps(E::ld8(w[r].add(i + 8)), x1, hi[r]);
                }
                i += LANES;
            }
            if full < k {
                let xt = tail(x, full, k);
                let (x0, x1) = (_mm256_loadu_ps(xt.as_ptr()), _mm256_loadu_ps(xt.as_ptr().add(8)));
                for r in 0..W {
                    let wt = tail(w[r], full, k);
                    lo[r] = _mm256_fmadd_ps(_mm256_loadu_ps(wt.as_ptr()), x0, lo[r]);
                    hi[r] = _mm256_fmadd_ps(_mm256_loadu_ps(wt.as_ptr().add(8)), x1, hi[r]);
                }
            }
            std::array::from_fn(|r| reduce8(_mm256_add_ps(lo[r], hi[r])))
        }
    }

    /// [`dot_avx2`] for `R` activation rows at once, the sixteen partial
    /// sums of each product in one 512-bit register.
    ///
    /// # Safety
    /// As [`dot_avx2`], and AVX-512F runs here.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_avx512<E: Elem, const W: usize, const R: usize>(w: [*const E; W], x: [*const f32; R], k: usize) -> [[f32; W]; R] {
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); W]; R];
            let full = k / LANES * LANES;
            let mut i = 0;
            while i < full {
                let xv: [__m512; R] = std::array::from_fn(|j| _mm512_loadu_ps(x[j].add(i)));
                for r in 0..W {
                    let wv = E::ld16(w[r].add(i));
                    for j in 0..R {
                        acc[j][r] = _mm512_fmadd_ps(wv, xv[j], acc[j][r]);
                    }
                }
                i += LANES;
            }
            if full < k {
                let xv: [__m512; R] = std::array::from_fn(|j| _mm512_loadu_ps(tail(x[j], full, k).as_ptr()));
                for r in 0..W {
                    let wv = _mm512_loadu_ps(tail(w[r], full, k).as_ptr());
                    for j in 0..R {
                        acc[j][r] = _mm512_fmadd_ps(wv, xv[j], acc[j][r]);
                    }
                }
            }
            acc.map(|acc| {
                acc.map(|a| {
                    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)));
                    reduce8(_mm256_add_ps(_mm512_castps512_ps256(a), hi))
                })
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values spread over several orders of magnitude, with
    /// both signs.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let unit = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                unit * [0.01f32, 1.0, 30.0][(s % 3) as usize]
            })
            .collect()
    }

    fn check<E: Elem>(from: impl Fn(f32) -> E, name: &str) {
        // Row lengths around the sixteen-value step and a model's; row
        // counts that leave columns outside the groups of eight; activation
        // row counts on both sides of the decode/tile split.
        for k in [1, 7, 15, 16, 17, 33, 100, 640 + 3] {
            for n in [1, 8, 13, 24] {
                let w: Vec<E> = values(n * k, (k * 31 + n) as u64).into_iter().map(&from).collect();
                for m in [1, 3, 8, 9, 20] {
                    let x = values(m * k, (m * 7 + k) as u64);
                    let want: Vec<f32> =
                        (0..m).flat_map(|r| (0..n).map(|c| dot_ref(&w[c * k..(c + 1) * k], &x[r * k..(r + 1) * k])).collect::<Vec<_>>()).collect();
                    for isa in Isa::supported() {
                        let mut got = vec![f32::NAN; m * n];
                        matmul_with(isa, m, k, n, &x, &w, &mut got);
                        assert!(
                            got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{name} {isa:?} m={m} k={k} n={n}: {:?} vs {:?}",
                            &got[..n.min(4)],
                            &want[..n.min(4)]
                        );
                    }
                    // And the reference is the dot product: within f32
                    // rounding of an f64 sum.
                    for r in 0..m {
                        for c in 0..n {
                            let (wr, xr) = (&w[c * k..(c + 1) * k], &x[r * k..(r + 1) * k]);
                            let exact: f64 = wr.iter().zip(xr).map(|(a, b)| f64::from(a.to_f32()) * f64::from(*b)).sum();
                            let scale: f64 = wr.iter().zip(xr).map(|(a, b)| (f64::from(a.to_f32()) * f64::from(*b)).abs()).sum();
                            assert!((f64::from(want[r * n + c]) - exact).abs() <= 1e-6 * scale.max(1e-30), "{name} k={k}: {} vs {exact}", want[r * n + c]);
                        }
                    }
                }
            }
        }
    }

    /// Every path this CPU runs gives the reference's bits, for each type,
    /// on odd shapes.
    #[test]
    fn every_path_gives_the_reference_bits() {
        check(f16::from_f32, "F16");
        check(bf16::from_f32, "BF16");
        check(|v| v, "F32");
    }

    /// Widening is exact: every f16 and bf16 bit pattern (NaNs aside) is
    /// the f32 the SIMD loads and the portable path produce.
    #[test]
    fn widening_is_exact_for_every_value() {
        let halves: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).filter(|h| !h.is_nan()).collect();
        let brains: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).filter(|h| !h.is_nan()).collect();
        let mut out = vec![0f32; halves.len()];
        f16::widen(&halves, &mut out);
        assert!(halves.iter().zip(&out).all(|(h, o)| f64::from(h.to_f32()) == f64::from(*o) && h.to_f64() == f64::from(*o)));
        let mut out = vec![0f32; brains.len()];
        bf16::widen(&brains, &mut out);
        assert!(brains.iter().zip(&out).all(|(h, o)| h.to_f64() == f64::from(*o)));
        // Through the kernels: a one-hot activation picks each weight out
        // (finite ones: infinity times the other lanes' zeros is NaN).
        let finite: Vec<f16> = halves.into_iter().filter(|h| h.is_finite()).collect();
        for isa in Isa::supported() {
            let k = 16;
            let w: Vec<f16> = finite[..finite.len() / (GROUP * k) * GROUP * k].to_vec();
            let n = w.len() / k;
            for pick in [0, 5, 15] {
                let mut x = vec![0f32; k];
                x[pick] = 1.0;
                let mut got = vec![0f32; n];
                matmul_with(isa, 1, k, n, &x, &w, &mut got);
                assert!((0..n).all(|c| f64::from(got[c]) == w[c * k + pick].to_f64()), "{isa:?}");
            }
        }
    }
}
