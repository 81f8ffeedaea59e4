//! Seeded, bounded fuzz loops on stable Rust: a small generator, byte mutations, and a runner
//! bounded by iterations and time. `TP_FUZZ_ITERATIONS` and `TP_FUZZ_SECONDS` make a long run
//! (`make fuzz`); a failing case prints its seed and iteration so it can be replayed.

use std::time::{Duration, Instant};

/// A small seeded generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Applies one to five random edits: bit flips, deletions, inserted `tokens`, truncation,
/// duplicated pieces, random bytes.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, tokens: &[&[u8]]) {
    for _ in 0..=rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(6) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 if at < input.len() => {
                let end = (at + rng.below(16)).min(input.len());
                input.drain(at..end);
            }
            2 if !tokens.is_empty() => {
                let token = *rng.pick(tokens);
                input.splice(at..at, token.iter().copied());
            }
            3 => input.truncate(at),
            4 if !input.is_empty() => {
                let from = rng.below(input.len());
                let end = (from + rng.below(32)).min(input.len());
                let piece = input[from..end].to_vec();
                input.splice(at..at, piece);
            }
            _ => input.insert(at, rng.next() as u8),
        }
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `case` up to `iterations` times (or `TP_FUZZ_ITERATIONS`) within `seconds` (or
/// `TP_FUZZ_SECONDS`), each with its own generator; returns the executions and prints them.
pub fn run(
    name: &str,
    seed: u64,
    iterations: u64,
    seconds: u64,
    mut case: impl FnMut(&mut Rng),
) -> u64 {
    let iterations = env_number("TP_FUZZ_ITERATIONS", iterations);
    let budget = Duration::from_secs(env_number("TP_FUZZ_SECONDS", seconds));
    let started = Instant::now();
    let mut done = 0;
    while done < iterations && started.elapsed() < budget {
        let case_seed = seed ^ done.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rng = Rng::new(case_seed);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&mut rng)));
        if let Err(panic) = outcome {
            eprintln!("fuzz {name}: case {done} (seed {case_seed:#x}) failed");
            std::panic::resume_unwind(panic);
        }
        done += 1;
    }
    eprintln!(
        "fuzz {name}: {done} executions in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    done
}
