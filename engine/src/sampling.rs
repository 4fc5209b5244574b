//! Choosing the next token from logits.
//!
//! Order follows llama.cpp's default chain: penalties, top-k, top-p, min-p
//! (the last three on probabilities at temperature 1), then temperature and
//! a seeded draw. Temperature 0 is greedy.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::constraint::Grammar;
use crate::error::{Error, Result};
use crate::tools::Tools;

/// How to pick tokens and when to stop. Defaults match llama.cpp's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 1.0 = off.
    pub top_p: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 0.0 = off.
    pub min_p: f32,
    /// Divides positive (multiplies negative) logits of recent tokens; 1.0 = off.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every recent token.
    pub presence_penalty: f32,
    /// Subtracted per occurrence of a recent token.
    pub frequency_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: usize,
    /// Same seed and same request → same output.
    pub seed: Option<u64>,
    /// Most tokens to generate; `None` = until EOS or the context is full.
    pub max_tokens: Option<usize>,
    /// Text that ends generation; never emitted.
    pub stop: Vec<String>,
    /// Keep generating past end-of-turn tokens (benchmarks).
    pub ignore_eos: bool,
    /// What the output must match (JSON, a schema, a grammar); `None` = free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grammar: Option<Grammar>,
    /// Functions the model may call (chat prompts only): offered in the
    /// prompt, calls held to them, and reported as [`crate::Event::ToolCall`]s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Tools>,
    /// Report each generated token's log-probability and this many most
    /// likely alternatives (up to [`MAX_TOP_LOGPROBS`]); `None` = off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<usize>,
}

/// Most alternatives a token's logprobs may list (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_p: 0.95,
            top_k: 40,
            min_p: 0.05,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            seed: None,
            max_tokens: None,
            stop: Vec::new(),
            ignore_eos: false,
            grammar: None,
            tools: None,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, ..Self::default() }
    }

    /// Checks ranges.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming the field and its allowed range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidRequest(m));
        if !self.temperature.is_finite() || self.temperature < 0.0 || self.temperature > 100.0 {
            return bad(format!("temperature must be between 0 and 100, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!("repetition_penalty must be positive, got {}", self.repetition_penalty));
        }
        for (name, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(format!("{name} must be between -2 and 2, got {v}"));
            }
        }
        if self.max_tokens == Some(0) {
            return bad("max_tokens must be at least 1".into());
        }
        if self.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return bad(format!("at most {MAX_TOP_LOGPROBS} alternatives per token can be reported"));
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop strings must not be empty".into());
        }
        Ok(())
    }
}

/// A sampler for one sequence.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self { params, rng }
    }

    /// Picks the next token from `logits`, given the tokens so far.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        self.apply_penalties(logits, history);
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut cands: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        if p.top_k > 0 && p.top_k < cands.len() {
            cands.select_nth_unstable_by(p.top_k - 1, by_logit);
            cands.truncate(p.top_k);
        }
        cands.sort_unstable_by(by_logit);
        let probs = softmax(cands.iter().map(|c| c.1), 1.0);
        let mut keep = cands.len();
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, pr) in probs.iter().enumerate() {
                cum += pr;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p;
            keep = keep.min(probs.iter().take_while(|&&pr| pr >= floor).count().max(1));
        }
        cands.truncate(keep);
        let probs = softmax(cands.iter().map(|c| c.1), p.temperature);
        let r: f32 = self.rng.random();
        let mut cum = 0.0;
        for (c, pr) in cands.iter().zip(&probs) {
            cum += pr;
            if r < cum {
                return c.0;
            }
        }
        cands.last().map_or(0, |c| c.0)
    }

    fn apply_penalties(&self, logits: &mut [f32], history: &[u32]) {
        let p = &self.params;
        if p.repetition_penalty == 1.0 && p.presence_penalty == 0.0 && p.frequency_penalty == 0.0 {
            return;
        }
        let recent = &history[history.len().saturating_sub(p.penalty_last_n)..];
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for &t in recent {
            *counts.entry(t).or_default() += 1;
        }
        for (&t, &n) in &counts {
            let Some(l) = logits.get_mut(t as usize) else { continue };
            if *l > 0.0 {
                *l /= p.repetition_penalty;
            } else {
                *l *= p.repetition_penalty;
            }
            *l -= n as f32 * p.frequency_penalty + p.presence_penalty;
        }
    }
}

/// Index of the largest logit (lowest index on ties, like llama.cpp).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn softmax(logits: impl Iterator<Item = f32> + Clone, temperature: f32) -> Vec<f32> {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.map(|l| ((l - max) / temperature).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.5, -1.0, 0.5, 2.9]
    }

    fn draw(params: SamplingParams, n: usize) -> Vec<u32> {
        let mut s = Sampler::new(params);
        (0..n).map(|_| s.sample(&mut logits(), &[])).collect()
    }

    #[test]
    fn greedy_takes_the_largest() {
        assert_eq!(draw(SamplingParams::greedy(), 3), vec![1, 1, 1]);
    }

    #[test]
    fn same_seed_same_draws_and_different_seed_differs() {
        let p = |seed| SamplingParams { temperature: 1.5, top_k: 0, top_p: 1.0, min_p: 0.0, seed: Some(seed), ..Default::default() };
        assert_eq!(draw(p(7), 50), draw(p(7), 50));
        assert_ne!(draw(p(7), 50), draw(p(8), 50));
    }

    #[test]
    fn top_k_limits_choices() {
        let p = SamplingParams { temperature: 5.0, top_k: 2, top_p: 1.0, min_p: 0.0, seed: Some(1), ..Default::default() };
        let got = draw(p, 200);
        assert!(got.iter().all(|t| *t == 1 || *t == 5), "{got:?}");
        assert!(got.contains(&1) && got.contains(&5));
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Probabilities at T=1: id1 ≈ .38, id5 ≈ .34, id2 ≈ .23 …; top_p .5 keeps ids 1 and 5.
        let p = SamplingParams { temperature: 5.0, top_k: 0, top_p: 0.5, min_p: 0.0, seed: Some(3), ..Default::default() };
        let got = draw(p, 200);
        assert!(got.iter().all(|t| *t == 1 || *t == 5), "{got:?}");
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        // min_p .7 of p(id1) keeps id1 and id5 (.34/.38 ≈ .9) but not id2 (.6).
        let p = SamplingParams { temperature: 5.0, top_k: 0, top_p: 1.0, min_p: 0.7, seed: Some(4), ..Default::default() };
        let got = draw(p, 200);
        assert!(got.iter().all(|t| *t == 1 || *t == 5), "{got:?}");
    }

    #[test]
    fn penalties_steer_away_from_repeats() {
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy() });
        // 3.0/2 = 1.5 < 2.9: the repeated id 1 loses to id 5, then id 5 repeated loses to id 2.
        assert_eq!(s.sample(&mut logits(), &[1]), 5);
        assert_eq!(s.sample(&mut logits(), &[1, 5]), 2);
        let mut s = Sampler::new(SamplingParams { frequency_penalty: 0.3, ..SamplingParams::greedy() });
        assert_eq!(s.sample(&mut logits(), &[1]), 5, "one repeat costs 0.3: 2.7 < 2.9");
        let mut s = Sampler::new(SamplingParams { presence_penalty: 0.05, ..SamplingParams::greedy() });
        assert_eq!(s.sample(&mut logits(), &[1, 1, 1]), 1, "presence is paid once: 2.95 > 2.9");
    }

    #[test]
    fn validation_names_the_field() {
        let e = SamplingParams { top_p: 0.0, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("top_p"), "{e}");
        let e = SamplingParams { temperature: -1.0, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("temperature"), "{e}");
        assert!(SamplingParams::default().validate().is_ok());
    }
}
