//! Attention on the CPU, one query row at a time in a fixed order.
//!
//! candle's path (a matrix product for the scores, a masked softmax over
//! every key of the chunk, a second product) rounds a query's result
//! differently depending on how many queries run with it and how long the
//! masked rows are, so a token's keys and values would depend on whether
//! it was part of a prompt chunk, a decode step, or a batch. Here each query
//! sees exactly the keys it may attend to, and its sums run in the same
//! order whatever else is computed: together with the row-invariant matrix
//! kernels this makes every token's cache entry and logits independent of
//! chunking and batching, which is what lets a cache be reused to the token
//! and a batched request give the text it gives alone.

use half::f16;

/// Shape of one attention call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Query rows (tokens of this call).
    pub n: usize,
    /// Absolute position of the first query.
    pub pos: usize,
    /// Key rows the cache buffers hold per head (their capacity).
    pub cap: usize,
    /// Keys further back than this are not seen (sliding window).
    pub window: usize,
}

/// `out (n, n_head·head_dim)` for queries `q (n_head, n, head_dim)`, already
/// rotated and scaled, over the caches `k`, `v (n_head_kv, cap, head_dim)`
/// holding positions `0..pos + n`. Query `j` sees keys
/// `max(0, pos + j + 1 - window) ..= pos + j`.
pub(crate) fn attend<T: KvElem>(s: Shape, q: &[f32], k: &[T], v: &[T], out: &mut [f32]) {
    let hd = s.head_dim;
    assert!(q.len() == s.n_head * s.n * hd && k.len() >= s.n_head_kv * s.cap * hd && v.len() == k.len() && out.len() == s.n * s.n_head * hd);
    assert!(s.pos + s.n <= s.cap && s.n_head.is_multiple_of(s.n_head_kv));
    let group = s.n_head / s.n_head_kv;
    let rows = s.n_head * s.n;
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    let per = rows.div_ceil(threads);
    let out_addr = out.as_mut_ptr() as usize;
    let work = |t: usize| {
        let mut scores = Vec::new();
        for row in (t * per).min(rows)..((t + 1) * per).min(rows) {
            let (h, j) = (row / s.n, row % s.n);
            let p = s.pos + j;
            let first = (p + 1).saturating_sub(s.window);
            let kv = h / group;
            let qr = &q[row * hd..(row + 1) * hd];
            let keys = &k[(kv * s.cap + first) * hd..(kv * s.cap + p + 1) * hd];
            let values = &v[(kv * s.cap + first) * hd..(kv * s.cap + p + 1) * hd];
            scores.clear();
            scores.extend(keys.chunks_exact(hd).map(|kr| T::dot(qr, kr)));
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for e in scores.iter_mut() {
                *e = (*e - max).exp();
                sum += *e;
            }
            // SAFETY: output row (j, h) is written by this thread only:
            // threads own disjoint ranges of (h, j).
            let o = unsafe { std::slice::from_raw_parts_mut((out_addr as *mut f32).add((j * s.n_head + h) * hd), hd) };
            o.fill(0.0);
            for (e, vr) in scores.iter().zip(values.chunks_exact(hd)) {
                T::add_scaled(o, e / sum, vr);
            }
        }
    };
    if rows < 2 * threads { (0..threads).for_each(work) } else { pool.execute(work) }
}

/// What a KV cache holds: f32, or f16 as llama.cpp keeps it by default (half
/// the memory and half the bytes read per decoded token; the f16 → f32
/// conversion is exact, so both element types round their sums alike).
pub(crate) trait KvElem: Copy + Send + Sync {
    /// `q · k`, rounded as [`dot`].
    fn dot(q: &[f32], k: &[Self]) -> f32;
    /// `o += w · v`, element by element (a multiply, then an add).
    fn add_scaled(o: &mut [f32], w: f32, v: &[Self]);
}

impl KvElem for f32 {
    fn dot(q: &[f32], k: &[f32]) -> f32 {
        dot(q, k)
    }

    fn add_scaled(o: &mut [f32], w: f32, v: &[f32]) {
        for (a, b) in o.iter_mut().zip(v) {
            *a += w * b;
        }
    }
}

impl KvElem for f16 {
    fn dot(q: &[f32], k: &[f16]) -> f32 {
        let mut acc = [0f32; 8];
        let (cq, ck) = (q.chunks_exact(8), k.chunks_exact(8));
        let tail: f32 = cq.remainder().iter().zip(ck.remainder()).map(|(x, y)| x * y.to_f32()).sum();
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "f16c"))]
        // SAFETY: AVX2 and F16C are enabled for this build; each chunk holds
        // 8 values (16 bytes of halves).
        unsafe {
            use std::arch::x86_64::*;
            let mut v = _mm256_setzero_ps();
            for (x, y) in cq.zip(ck) {
                let y = _mm256_cvtph_ps(_mm_loadu_si128(y.as_ptr().cast()));
                v = _mm256_add_ps(v, _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr()), y));
            }
            _mm256_storeu_ps(acc.as_mut_ptr(), v);
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "f16c")))]
        for (x, y) in cq.zip(ck) {
            for i in 0..8 {
                acc[i] += x[i] * y[i].to_f32();
            }
        }
        combine(&acc) + tail
    }

    fn add_scaled(o: &mut [f32], w: f32, v: &[f16]) {
        assert_eq!(o.len(), v.len());
        let whole = v.len() / 8 * 8;
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "f16c"))]
        // SAFETY: as in `dot`; `i + 8 <= whole <= len` for both slices.
        unsafe {
            use std::arch::x86_64::*;
            let wv = _mm256_set1_ps(w);
            for i in (0..whole).step_by(8) {
                let b = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(i).cast()));
                let a = o.as_mut_ptr().add(i);
                _mm256_storeu_ps(a, _mm256_add_ps(_mm256_loadu_ps(a), _mm256_mul_ps(wv, b)));
            }
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "f16c")))]
        for (a, b) in o[..whole].iter_mut().zip(&v[..whole]) {
            *a += w * b.to_f32();
        }
        for (a, b) in o[whole..].iter_mut().zip(&v[whole..]) {
            *a += w * b.to_f32();
        }
    }
}

/// The fixed order in which [`dot`]'s eight running sums are combined.
fn combine(acc: &[f32; 8]) -> f32 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `a · b` with eight running sums combined in a fixed order, so that the
/// result does not depend on the caller. On x86-64 with AVX2 the eight sums
/// are one vector (a multiply, then an add: the same roundings as the
/// portable loop, so the same result); the compiler had vectorised that
/// loop only in 128-bit halves with shuffles, the largest share of
/// attention in a long prompt.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    // SAFETY: AVX2 is enabled for this build; each chunk holds 8 values.
    unsafe {
        use std::arch::x86_64::*;
        let mut v = _mm256_setzero_ps();
        for (x, y) in ca.zip(cb) {
            v = _mm256_add_ps(v, _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr()), _mm256_loadu_ps(y.as_ptr())));
        }
        _mm256_storeu_ps(acc.as_mut_ptr(), v);
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    combine(&acc) + tail
}

#[cfg(test)]
mod tests {
    use super::{Shape, attend, dot, f16};

    /// The vector dot product rounds exactly as the portable loop (eight
    /// running sums, multiply then add, combined pairwise), on head sizes
    /// with and without a remainder.
    #[test]
    fn dot_products_round_as_the_portable_loop() {
        for n in [8, 64, 80, 128, 131, 256] {
            let (a, b) = (random(n, n as u64), random(n, 7 * n as u64));
            let mut acc = [0f32; 8];
            for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
                for i in 0..8 {
                    acc[i] += x[i] * y[i];
                }
            }
            let tail: f32 = a[n / 8 * 8..].iter().zip(&b[n / 8 * 8..]).map(|(x, y)| x * y).sum();
            let want = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
            assert_eq!(dot(&a, &b).to_bits(), want.to_bits(), "head size {n}");
        }
    }

    /// Straightforward attention in f64 for comparison.
    fn reference(s: Shape, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let hd = s.head_dim;
        let g = s.n_head / s.n_head_kv;
        let mut out = vec![0f32; s.n * s.n_head * hd];
        for h in 0..s.n_head {
            for j in 0..s.n {
                let p = s.pos + j;
                let first = (p + 1).saturating_sub(s.window);
                let kv = h / g;
                let sc: Vec<f64> =
                    (first..=p).map(|t| (0..hd).map(|d| f64::from(q[(h * s.n + j) * hd + d]) * f64::from(k[(kv * s.cap + t) * hd + d])).sum()).collect();
                let m = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                for d in 0..hd {
                    let val: f64 = (first..=p).zip(&sc).map(|(t, x)| (x - m).exp() / z * f64::from(v[(kv * s.cap + t) * hd + d])).sum();
                    out[(j * s.n_head + h) * hd + d] = val as f32;
                }
            }
        }
        out
    }

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn agrees_with_a_reference_and_a_query_gets_the_same_bits_in_any_chunk() {
        for (n_head, n_head_kv, head_dim, window) in [(4, 2, 64, usize::MAX), (3, 1, 20, 5), (2, 2, 256, 7)] {
            let (len, cap) = (23, 32);
            let q = random(n_head * len * head_dim, 1);
            let k = random(n_head_kv * cap * head_dim, 2);
            let v = random(n_head_kv * cap * head_dim, 3);
            let whole = Shape { n_head, n_head_kv, head_dim, n: len, pos: 0, cap, window };
            let mut all = vec![0f32; len * n_head * head_dim];
            attend(whole, &q, &k, &v, &mut all);
            for (a, b) in all.iter().zip(reference(whole, &q, &k, &v)) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
            // The same queries two at a time from position 5, and one at a time.
            for step in [2, 1] {
                for start in (5..len).step_by(step) {
                    let n = step.min(len - start);
                    let qs: Vec<f32> = (0..n_head).flat_map(|h| q[(h * len + start) * head_dim..(h * len + start + n) * head_dim].iter().copied()).collect();
                    let mut part = vec![0f32; n * n_head * head_dim];
                    attend(Shape { n, pos: start, ..whole }, &qs, &k, &v, &mut part);
                    let w = n_head * head_dim;
                    assert_eq!(part, all[start * w..(start + n) * w], "rows {start}..{} in chunks of {step}", start + n);
                }
            }
        }
    }
    /// Keys and values held as f16 give exactly what the same values give
    /// as f32 (the conversion is exact and the sums run in the same order),
    /// with and without a remainder past the last eight dimensions.
    #[test]
    fn an_f16_cache_attends_as_the_same_values_in_f32() {
        for (n_head, n_head_kv, head_dim) in [(4, 2, 64), (3, 1, 20), (2, 2, 131)] {
            let (len, cap) = (19, 24);
            let q = random(n_head * len * head_dim, 4);
            let halves = |seed| random(n_head_kv * cap * head_dim, seed).into_iter().map(f16::from_f32).collect::<Vec<_>>();
            let (k16, v16) = (halves(5), halves(6));
            let widen = |h: &[f16]| h.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
            let s = Shape { n_head, n_head_kv, head_dim, n: len, pos: 0, cap, window: usize::MAX };
            let (mut from16, mut from32) = (vec![0f32; len * n_head * head_dim], vec![0f32; len * n_head * head_dim]);
            attend(s, &q, &k16, &v16, &mut from16);
            attend(s, &q, &widen(&k16), &widen(&v16), &mut from32);
            assert_eq!(from16.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), from32.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "head size {head_dim}");
        }
    }
}
