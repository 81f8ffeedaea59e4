//! Verifying sandrun's result signature: rebuilding the signed text
//! `<job_hash>|<exit_code>|<cpu>|<memory_mb>|<path>:<sha256>|...` from `/status` and the stream's
//! `[DONE]` figures, and checking it against the allowlisted worker key.
//!
//! `<cpu>` is the CPU seconds as a C++ stream prints a double (`%g`, 6 significant digits).
//! `/status` rounds it to 2 decimals and `[DONE]` prints 6, so the exact text is found among the
//! `%g` strings whose value lies within half a unit of the last printed decimal, nearest first.

use crate::base::job::{DoneFigures, SignatureVerdict};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde_json::Value;
use std::collections::BTreeMap;

/// Most CPU candidates tried for one job (each costs one signature check, ~50 us): every
/// microsecond that `/status`'s 2-decimal figure allows, both ends included.
pub const MAX_CANDIDATES: usize = 10_001;

/// The signature check of one result, with its reason when it did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureCheck {
    /// The verdict.
    pub verdict: SignatureVerdict,
    /// Why (None when verified).
    pub reason: Option<String>,
}

impl SignatureCheck {
    fn new(verdict: SignatureVerdict, reason: impl Into<String>) -> Self {
        SignatureCheck {
            verdict,
            reason: Some(reason.into()),
        }
    }
}

/// Reads the figures of a `[DONE] Job completed (exit=0, CPU=0.154612s, Mem=13MB)` line; None
/// for any other line, Some with no figures for a bare `[DONE] Job completed`.
pub fn parse_done(line: &str) -> Option<Option<DoneFigures>> {
    let rest = line.trim_end().strip_prefix("[DONE] Job ")?;
    let Some((status, figures)) = rest.split_once(" (") else {
        return Some(None);
    };
    let figures = figures.strip_suffix(')')?;
    let mut exit_code = None;
    let mut cpu = None;
    let mut memory = None;
    for part in figures.split(", ") {
        match part.split_once('=') {
            Some(("exit", v)) => exit_code = v.parse::<i32>().ok(),
            Some(("CPU", v)) => cpu = v.strip_suffix('s').map(str::to_string),
            Some(("Mem", v)) => memory = v.strip_suffix("MB").and_then(|m| m.parse::<u64>().ok()),
            _ => {}
        }
    }
    Some(Some(DoneFigures {
        status: status.to_string(),
        exit_code: exit_code?,
        cpu_seconds: cpu.filter(|c| c.parse::<f64>().is_ok())?,
        memory_mb: memory?,
    }))
}

/// A number as a default C++ output stream prints it (`%g`, 6 significant digits).
pub fn cpp_g(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return if value == 0.0 {
            "0".into()
        } else {
            value.to_string()
        };
    }
    let scientific = format!("{value:.5e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let trim = |t: &str| -> String {
        if t.contains('.') {
            t.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            t.to_string()
        }
    };
    if (-4..6).contains(&exponent) {
        let decimals = usize::try_from(5 - exponent).unwrap_or(0);
        trim(&format!("{value:.decimals$}"))
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exponent.unsigned_abs())
    }
}

/// The `%g` texts a CPU figure printed with some decimals (`0.11`, `0.154612`) may stand for,
/// nearest to it first, at most `limit`.
///
/// sandrun's figure is whole microseconds (`getrusage`'s `ru_utime` + `ru_stime`), so the
/// microseconds within half a unit of the last printed decimal come first: 10,001 of them for
/// `/status`'s 2 decimals, one for `[DONE]`'s 6. Above 1 s, where `%g`'s 6 digits are coarser
/// than a microsecond, a value ending in 5 may print either way (its double can fall on either
/// side), so both are tried. Then, for a worker whose figure is not whole microseconds, every
/// 6-significant-digit text in that range, decade by decade, while the limit allows.
pub fn cpu_candidates(printed: &str, limit: usize) -> Vec<String> {
    let Ok(value) = printed.trim().parse::<f64>() else {
        return Vec::new();
    };
    if !value.is_finite() || value < 0.0 {
        return Vec::new();
    }
    let decimals = printed.split_once('.').map_or(0, |(_, d)| d.len()) as i32;
    let half = 0.5 * 10f64.powi(-decimals);
    let (lo, hi) = ((value - half).max(0.0), value + half);
    let mut seen = std::collections::HashSet::new();
    let mut found = Vec::new();
    let mut push = |text: String, found: &mut Vec<String>| {
        if found.len() < limit && seen.insert(text.clone()) {
            found.push(text);
        }
    };
    for micros in microseconds_nearest_first(value, lo, hi, limit) {
        if found.len() >= limit {
            return found;
        }
        if micros == 0 {
            push("0".into(), &mut found);
            continue;
        }
        let v = micros as f64 / 1e6;
        push(cpp_g(v * (1.0 - 1e-9)), &mut found);
        push(cpp_g(v * (1.0 + 1e-9)), &mut found);
    }
    for text in six_digit_texts(value, lo, hi, limit) {
        push(text, &mut found);
    }
    found
}

/// The whole microseconds in `[lo, hi]` (seconds), nearest to `value` first, at most about
/// `2 * limit` of them (the nearest).
fn microseconds_nearest_first(value: f64, lo: f64, hi: f64, limit: usize) -> Vec<u64> {
    // A thousandth of a microsecond absorbs the decimal-to-binary error of the bounds.
    let first = (lo * 1e6 - 1e-3).ceil().max(0.0) as u64;
    let last = (hi * 1e6 + 1e-3).floor().max(0.0) as u64;
    if first > last {
        return Vec::new();
    }
    let target = value * 1e6;
    let centre = (target.round().max(0.0) as u64).clamp(first, last);
    let reach = limit as u64;
    let mut all: Vec<u64> = (centre.saturating_sub(reach).max(first)
        ..=centre.saturating_add(reach).min(last))
        .collect();
    all.sort_by(|a, b| {
        (*a as f64 - target)
            .abs()
            .total_cmp(&(*b as f64 - target).abs())
    });
    all
}

/// Every 6-significant-digit value in `[lo, hi]`, printed as `%g`, nearest to `value` first
/// within each decade, at most `limit` per decade, from the top decade down.
fn six_digit_texts(value: f64, lo: f64, hi: f64, limit: usize) -> Vec<String> {
    let mut found: Vec<(f64, String)> = Vec::new();
    if hi <= 0.0 {
        return Vec::new();
    }
    let top = hi.log10().floor() as i32;
    let bottom = top - 12;
    for e in (bottom..=top).rev() {
        // Values of this decade printed with 6 significant digits: m * 10^(e-5), m in 1e5..1e6.
        let scale = |m: i64| {
            let shift = e - 5;
            if shift < 0 {
                m as f64 / 10f64.powi(-shift)
            } else {
                m as f64 * 10f64.powi(shift)
            }
        };
        let step = 10f64.powi(e - 5);
        let (x_lo, x_hi) = (lo.max(10f64.powi(e)), hi.min(10f64.powi(e + 1)));
        if x_lo > x_hi {
            continue;
        }
        let first = ((x_lo / step).round() as i64).max(100_000);
        let last = ((x_hi / step).round() as i64).min(999_999);
        if first > last {
            continue;
        }
        let centre = ((value / step).round() as i64).clamp(first, last);
        let (mut down, mut up) = (centre, centre + 1);
        let mut taken = 0;
        while taken < limit && (down >= first || up <= last) {
            for m in [down, up] {
                if (first..=last).contains(&m) {
                    let v = scale(m);
                    found.push(((v - value).abs(), cpp_g(v)));
                    taken += 1;
                }
            }
            down -= 1;
            up += 1;
        }
        if found.len() >= 2 * limit {
            break;
        }
    }
    found.sort_by(|a, b| a.0.total_cmp(&b.0));
    found.into_iter().map(|(_, text)| text).collect()
}

/// The parts of a `/status` answer that the worker signed.
struct Signed {
    job_hash: String,
    exit_code: i64,
    cpu_2dp: String,
    memory_mb: u64,
    files: BTreeMap<String, String>,
    signature: Signature,
}

fn signed_parts(status: &Value) -> Result<Signed, String> {
    let meta = status
        .get("execution_metadata")
        .ok_or("the status has no execution_metadata")?;
    let signature = status
        .pointer("/worker_metadata/signature")
        .and_then(Value::as_str)
        .ok_or("the worker sent no signature")?;
    let bytes = STANDARD
        .decode(signature)
        .map_err(|_| "the signature is not base64")?;
    let signature = Signature::from_slice(&bytes).map_err(|_| "the signature is not 64 bytes")?;
    let files = reported_hashes(status);
    Ok(Signed {
        job_hash: status
            .get("job_hash")
            .and_then(Value::as_str)
            .ok_or("the status has no job_hash")?
            .to_string(),
        exit_code: meta
            .get("exit_code")
            .and_then(Value::as_i64)
            .ok_or("the status has no exit_code")?,
        cpu_2dp: format!(
            "{:.2}",
            meta.get("cpu_seconds")
                .and_then(Value::as_f64)
                .unwrap_or(0.0)
        ),
        memory_mb: meta
            .get("memory_peak_mb")
            .and_then(Value::as_u64)
            .ok_or("the status has no memory_peak_mb")?,
        files,
        signature,
    })
}

/// The text sandrun signs, for one CPU text.
pub fn signed_text(
    job_hash: &str,
    exit_code: i64,
    cpu: &str,
    memory_mb: u64,
    files: &BTreeMap<String, String>,
) -> String {
    let mut text = format!("{job_hash}|{exit_code}|{cpu}|{memory_mb}|");
    for (path, sha) in files {
        text.push_str(path);
        text.push(':');
        text.push_str(sha);
        text.push('|');
    }
    text
}

/// The sha256 per output path that the worker's status lists (the ones its signature covers),
/// whether or not a signature came or verifies: the outputs are held to them all the same. A
/// file listed without one has `""`.
pub fn reported_hashes(status: &Value) -> BTreeMap<String, String> {
    status
        .get("output_files")
        .and_then(Value::as_object)
        .map(|files| {
            files
                .iter()
                .map(|(path, meta)| {
                    let sha = meta.get("sha256").and_then(Value::as_str).unwrap_or("");
                    (path.clone(), sha.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Checks a finished job's signature against the allowlisted `worker_id` (base64 public key),
/// with the stream's `[DONE]` figures when they were seen.
pub fn verify(worker_id: &str, status: &Value, figures: Option<&DoneFigures>) -> SignatureCheck {
    use SignatureVerdict::{Failed, Unverifiable, Verified};
    let key = STANDARD
        .decode(worker_id)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok());
    let Some(key) = key else {
        return SignatureCheck::new(Failed, "the allowlisted worker_id is not a public key");
    };
    let signed = match signed_parts(status) {
        Ok(s) => s,
        Err(why) => return SignatureCheck::new(Failed, why),
    };
    // The stream's figures are the exact CPU text, but a job's stdout can print a [DONE]
    // line of its own: figures that /status contradicts are not the worker's.
    let figures = figures.filter(|f| agrees(f, &signed));
    let verifies = |cpu: &str, memory: u64| {
        let text = signed_text(
            &signed.job_hash,
            signed.exit_code,
            cpu,
            memory,
            &signed.files,
        );
        key.verify(text.as_bytes(), &signed.signature).is_ok()
    };
    let verified = SignatureCheck {
        verdict: Verified,
        reason: None,
    };
    let mut tried = 0;
    if let Some(f) = figures {
        // The figure itself, printed as sandrun prints it, is nearly always the one.
        let exact = f.cpu_seconds.parse::<f64>().ok().map(cpp_g);
        if exact.is_some_and(|cpu| verifies(&cpu, f.memory_mb)) {
            return verified;
        }
        let candidates = cpu_candidates(&f.cpu_seconds, MAX_CANDIDATES);
        if candidates.iter().any(|cpu| verifies(cpu, f.memory_mb)) {
            return verified;
        }
        tried += candidates.len();
    }
    if signed
        .cpu_2dp
        .parse::<f64>()
        .is_ok_and(|v| verifies(&cpp_g(v), signed.memory_mb))
    {
        return verified;
    }
    let candidates = cpu_candidates(&signed.cpu_2dp, MAX_CANDIDATES);
    if candidates.iter().any(|cpu| verifies(cpu, signed.memory_mb)) {
        return verified;
    }
    tried += candidates.len();
    match figures {
        Some(_) => SignatureCheck::new(
            Failed,
            format!(
                "result signature invalid: no CPU value that the stream's [DONE] figures or \
                 /status allow ({tried} tried) makes the result verify against the allowlisted key"
            ),
        ),
        None => SignatureCheck::new(
            Unverifiable,
            format!(
                "result unverifiable: none of the {tried} CPU values that /status allows verifies \
                 (no [DONE] figures that agree with /status were seen); the signed text could \
                 not be rebuilt"
            ),
        ),
    }
}

/// Whether a `[DONE]` line's figures agree with `/status`: the same exit code and memory, and
/// a CPU figure that rounds to `/status`'s two decimals.
fn agrees(figures: &DoneFigures, signed: &Signed) -> bool {
    let cpu = |text: &str| text.parse::<f64>().ok();
    let near = match (cpu(&figures.cpu_seconds), cpu(&signed.cpu_2dp)) {
        (Some(stream), Some(status)) => (stream - status).abs() <= 0.005 + 1e-9,
        _ => false,
    };
    i64::from(figures.exit_code) == signed.exit_code
        && figures.memory_mb == signed.memory_mb
        && near
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpp_g_prints_like_a_cpp_stream() {
        assert_eq!(cpp_g(0.0), "0");
        assert_eq!(cpp_g(0.105819), "0.105819");
        assert_eq!(cpp_g(0.1), "0.1");
        assert_eq!(cpp_g(1.234567), "1.23457");
        assert_eq!(cpp_g(0.0123456), "0.0123456");
        assert_eq!(cpp_g(0.00005), "5e-05");
        assert_eq!(cpp_g(1234567.0), "1.23457e+06");
        assert_eq!(cpp_g(12.5), "12.5");
    }

    #[test]
    fn candidates_hold_the_true_figure_nearest_first() {
        assert_eq!(cpu_candidates("0.154612", 10)[0], "0.154612");
        assert_eq!(cpu_candidates("1.234567", 10)[0], "1.23457");
        assert_eq!(cpu_candidates("0.100000", 10)[0], "0.1");
        assert_eq!(cpu_candidates("0.000000", 10)[0], "0");
        let near_ms = cpu_candidates("0.000050", MAX_CANDIDATES);
        assert!(near_ms.contains(&"5e-05".to_string()));
        assert!(near_ms.contains(&"5.04321e-05".to_string()));
        let from_status = cpu_candidates("0.11", MAX_CANDIDATES);
        assert_eq!(from_status.len(), MAX_CANDIDATES);
        assert!(from_status.contains(&"0.105819".to_string()));
        assert!(cpu_candidates("0.00", 5).contains(&"0".to_string()));
        let tiny = cpu_candidates("0.00", MAX_CANDIDATES);
        for t in ["0", "1e-06", "7e-06", "0.003456", "0.005"] {
            assert!(tiny.contains(&t.to_string()), "{t}");
        }
        // Above 1 s a microsecond ending in 5 may print either way.
        let tie = cpu_candidates("1.234565", 10);
        assert!(tie.contains(&"1.23456".to_string()) && tie.contains(&"1.23457".to_string()));
        assert!(cpu_candidates("5", MAX_CANDIDATES).len() <= MAX_CANDIDATES);
    }

    /// A finished job's `/status` and `[DONE]` CPU text as sandrun makes them, for a CPU time
    /// of `micros` microseconds (split between user and system time as `getrusage` reports it).
    fn sandrun_result(key: &ed25519_dalek::SigningKey, micros: u64) -> (Value, String) {
        use ed25519_dalek::Signer;
        let (user, system) = (micros * 2 / 3, micros - micros * 2 / 3);
        let cpu = (user / 1_000_000) as f64
            + (user % 1_000_000) as f64 / 1e6
            + (system / 1_000_000) as f64
            + (system % 1_000_000) as f64 / 1e6;
        let files = BTreeMap::from([("result.txt".to_string(), "ab".repeat(32))]);
        let text = signed_text(&"cd".repeat(32), 0, &cpp_g(cpu), 13, &files);
        let signature = STANDARD.encode(key.sign(text.as_bytes()).to_bytes());
        let status = serde_json::json!({
            "job_hash": "cd".repeat(32),
            "execution_metadata": {"cpu_seconds": format!("{cpu:.2}").parse::<f64>().unwrap_or(0.0),
                "memory_peak_mb": 13, "exit_code": 0},
            "output_files": {"result.txt": {"sha256": "ab".repeat(32)}},
            "worker_metadata": {"signature": signature},
        });
        (status, format!("{cpu:.6}"))
    }

    #[test]
    fn short_jobs_verify_with_and_without_done_figures() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let worker_id = STANDARD.encode(key.verifying_key().to_bytes());
        let micros = [
            0, 1, 7, 12, 50, 99, 100, 999, 1_000, 3_456, 4_999, 5_000, 5_001, 9_999, 10_000,
            12_345, 14_999, 99_999, 100_000, 105_819, 1_234_565, 12_500_000,
        ];
        for m in micros {
            let (status, cpu) = sandrun_result(&key, m);
            let figures = DoneFigures {
                status: "completed".into(),
                exit_code: 0,
                cpu_seconds: cpu.clone(),
                memory_mb: 13,
            };
            let with = verify(&worker_id, &status, Some(&figures));
            assert_eq!(
                with.verdict,
                SignatureVerdict::Verified,
                "{m} us, [DONE] {cpu}"
            );
            let without = verify(&worker_id, &status, None);
            assert_eq!(
                without.verdict,
                SignatureVerdict::Verified,
                "{m} us, no [DONE]"
            );
        }
    }

    #[test]
    fn a_figure_finer_than_a_microsecond_without_done_figures_stays_unverifiable() {
        use ed25519_dalek::Signer;
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let worker_id = STANDARD.encode(key.verifying_key().to_bytes());
        let text = signed_text("h", 0, "0.0123456", 0, &BTreeMap::new());
        let status = serde_json::json!({
            "job_hash": "h",
            "execution_metadata": {"cpu_seconds": 0.01, "memory_peak_mb": 0, "exit_code": 0},
            "worker_metadata": {"signature": STANDARD.encode(key.sign(text.as_bytes()).to_bytes())},
        });
        let check = verify(&worker_id, &status, None);
        assert_eq!(check.verdict, SignatureVerdict::Unverifiable, "{check:?}");
        let figures = DoneFigures {
            status: "completed".into(),
            exit_code: 0,
            cpu_seconds: "0.012346".into(),
            memory_mb: 0,
        };
        let check = verify(&worker_id, &status, Some(&figures));
        assert_eq!(check.verdict, SignatureVerdict::Verified, "{check:?}");
    }

    #[test]
    fn done_lines_give_their_figures() {
        let f = parse_done("[DONE] Job completed (exit=0, CPU=0.154612s, Mem=13MB)\n")
            .flatten()
            .expect("figures");
        assert_eq!(
            (
                f.status.as_str(),
                f.exit_code,
                f.cpu_seconds.as_str(),
                f.memory_mb
            ),
            ("completed", 0, "0.154612", 13)
        );
        assert_eq!(parse_done("[DONE] Job completed\n"), Some(None));
        assert_eq!(parse_done("line 0\n"), None);
    }
}
