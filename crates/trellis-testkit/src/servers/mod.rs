//! In-process implementations of the test backends. The
//! `trellis-test-backend` binary is a thin CLI over these, and tests may
//! also run them directly on a tokio runtime when a separate process is not
//! needed.

pub mod grpc;
pub mod http;
pub mod tcp;

use std::time::Duration;

/// Parses `Nms`, `Ns` or `Nm` (e.g. `50ms`, `5s`, `2m`) into a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    // "ms" must be tried before "m" and "s".
    let (num, unit) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else {
        return Err(format!("invalid duration {s:?}: expected Nms, Ns or Nm"));
    };
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}: expected Nms, Ns or Nm"))?;
    n.checked_mul(unit).map(Duration::from_millis).ok_or_else(|| format!("duration {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        for bad in ["", "ms", "5", "5h", "-1s", "1.5s", "99999999999999999999m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
