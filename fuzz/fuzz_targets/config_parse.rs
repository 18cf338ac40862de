//! Fuzzes config parsing: arbitrary text through `cascadia_config::parse` and
//! `parse_with_models` (whose loader returns a fixed small model, so cascade
//! routes validate too). Must hold: neither panics; a rejected config has at
//! least one error, and every error names a field path or a line/column
//! position; an accepted config's summary renders.
#![no_main]

use cascadia_config::{Config, ConfigErrors};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = cascadia_fuzz::utf8_prefix(data);
    check(cascadia_config::parse(text));
    let mut loader = |_path: &str| Ok(cascadia_fuzz::MODEL_JSON.to_owned());
    check(cascadia_config::parse_with_models(text, &mut loader));
});

fn check(result: Result<Config, ConfigErrors>) {
    match result {
        Ok(config) => {
            let _ = config.summary();
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "ConfigErrors must never be empty");
            for error in &errors.0 {
                assert!(
                    !error.path.is_empty() || has_position(&error.message),
                    "config error with neither a field path nor a position: {error:?}"
                );
            }
            let _ = errors.to_string();
        }
    }
}

/// `... (line L, column C)` or `line L, column C: ...`, as `with_position` writes it.
fn has_position(message: &str) -> bool {
    message.contains("line ") && message.contains("column ")
}
