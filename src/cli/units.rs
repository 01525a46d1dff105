//! Flag values with units: sizes (`12GB`) and durations (`30s`).

/// A number and a unit (`12GB`, `30s`): the number times the unit's scale,
/// from `units` (`""` is the unit-less case). `what` names the quantity in
/// errors, with an `example`.
fn parse_quantity(
    s: &str,
    units: &[(&[&str], f64)],
    what: &str,
    example: &str,
) -> Result<f64, String> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a {what}: use e.g. {example}"))?;
    let unit = unit.to_ascii_lowercase();
    let Some((_, scale)) = units
        .iter()
        .find(|(names, _)| names.contains(&unit.as_str()))
    else {
        let known: Vec<&str> = units
            .iter()
            .flat_map(|(n, _)| n.iter().copied())
            .filter(|n| !n.is_empty())
            .collect();
        return Err(format!(
            "unknown unit {unit:?} in {s:?}: use {}",
            known.join(", ")
        ));
    };
    if number < 0.0 || !number.is_finite() {
        return Err(format!("{s:?} is not a {what}"));
    }
    Ok(number * scale)
}

/// `12GB`, `16GiB`, `800MB` or plain bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    const UNITS: &[(&[&str], f64)] = &[
        (&["", "b"], 1.0),
        (&["kb", "k"], 1e3),
        (&["mb", "m"], 1e6),
        (&["gb", "g"], 1e9),
        (&["tb", "t"], 1e12),
        (&["kib"], 1024.0),
        (&["mib"], 1048576.0),
        (&["gib"], 1073741824.0),
        (&["tib"], 1099511627776.0),
    ];
    parse_quantity(s, UNITS, "size", "12GB or 16GiB").map(|bytes| bytes as u64)
}

/// `30s`, `2m`, `500ms`, `1h` or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    const UNITS: &[(&[&str], f64)] = &[
        (&["", "s"], 1.0),
        (&["ms"], 1e-3),
        (&["m", "min"], 60.0),
        (&["h"], 3600.0),
    ];
    let seconds = parse_quantity(s, UNITS, "duration", "30s, 2m or 500ms")?;
    // A zero timeout would close every connection before its first request.
    if seconds == 0.0 {
        return Err(format!("{s:?}: a duration must be more than zero"));
    }
    std::time::Duration::try_from_secs_f64(seconds).map_err(|_| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("12GB"), Ok(12_000_000_000));
        assert_eq!(parse_bytes("16GiB"), Ok(16 << 30));
        assert_eq!(parse_bytes(" 800 mb "), Ok(800_000_000));
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert!(parse_bytes("-1GB").is_err());
        assert!(parse_bytes("12 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
    }

    #[test]
    fn durations_parse_with_units() {
        use std::time::Duration;
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("0s").unwrap_err().contains("more than zero"));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
