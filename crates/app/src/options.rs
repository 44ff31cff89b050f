//! What each training option may be: one check per option, used by the command line's flags and
//! by the training-state reader alike, so a state holds nothing a flag would refuse. Each error
//! says what was expected, for the caller to prefix with the flag or the state's file and field.

use kernels::Precision;

/// The devices `--device` names.
pub const DEVICES: [&str; 4] = ["cpu", "cuda", "emulated", "auto"];
/// More epochs than anyone trains, and few enough that no count derived from them overflows.
pub const MAX_EPOCHS: usize = 1_000_000;

/// `--epochs`: 1 to [`MAX_EPOCHS`].
pub fn epochs(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_EPOCHS).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a whole number from 1 to at most {MAX_EPOCHS}"
        )),
    }
}

/// `--batch-size`, `--train-limit`, `--test-limit`: a count of images, at least 1.
pub fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("expected a whole number of at least 1".to_string()),
    }
}

/// `--lr`: finite and above 0.
pub fn learning_rate(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err("expected a positive number".to_string()),
    }
}

/// `--seed`: any 64-bit unsigned number.
pub fn seed(text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("expected a whole number from 0 to {}", u64::MAX))
}

/// `--device`: one of [`DEVICES`].
pub fn device(text: &str) -> Result<String, String> {
    if DEVICES.contains(&text) {
        Ok(text.to_string())
    } else {
        Err(format!("expected one of {}", DEVICES.join(", ")))
    }
}

/// `--precision`: tf32 or fp32.
pub fn precision(text: &str) -> Result<Precision, String> {
    text.parse()
        .map_err(|_| "expected tf32 or fp32".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_option_takes_its_range_and_refuses_the_rest() {
        assert_eq!(epochs("1"), Ok(1));
        assert_eq!(epochs("1000000"), Ok(MAX_EPOCHS));
        for bad in ["0", "1000001", "-1", "2.5", "", "18446744073709551616"] {
            assert!(
                epochs(bad).unwrap_err().contains("1 to at most 1000000"),
                "{bad}"
            );
        }
        assert_eq!(at_least_one("64"), Ok(64));
        assert!(at_least_one("0").is_err() && at_least_one("x").is_err());
        assert_eq!(learning_rate("1e-3"), Ok(1e-3));
        for bad in ["0", "-1", "NaN", "inf", "1e39", "fast"] {
            assert!(learning_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(seed("18446744073709551615"), Ok(u64::MAX));
        assert!(seed("-1").is_err());
        assert_eq!(device("emulated"), Ok("emulated".to_string()));
        assert!(device("gpu")
            .unwrap_err()
            .contains("cpu, cuda, emulated, auto"));
        assert_eq!(precision("fp32"), Ok(Precision::Fp32));
        assert!(precision("fp16").is_err());
    }
}
