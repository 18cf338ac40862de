//! Fuzzes OIP REST request decoding: arbitrary bytes as an infer body
//! (`serde_json::from_slice::<InferRequest>`), then everything stage 1 of a
//! cascade does with it (features in each layout, scoring, row selection for
//! stage 2, conversion to gRPC); and the same bytes as Triton's binary
//! extension through `binary_request_to_json`, with the header length taken
//! from the first two bytes (big-endian). Must hold: nothing panics; a
//! converted binary request is valid JSON without `binary_data_size`, and goes
//! through the same stage-1 checks (see `cascadia_fuzz::check_request`).
#![no_main]

use cascadia_oip::json::{binary_request_to_json, InferRequest};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static MODEL: OnceLock<cascadia_cascade::LogisticModel> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let model = MODEL.get_or_init(cascadia_fuzz::model);
    if let Ok(request) = serde_json::from_slice::<InferRequest>(data) {
        cascadia_fuzz::check_request(&request, model);
    }
    if let [hi, lo, body @ ..] = data {
        let json_len = usize::from(u16::from_be_bytes([*hi, *lo]));
        if let Ok(json) = binary_request_to_json(body, json_len, 4 << 20) {
            let value: serde_json::Value =
                serde_json::from_slice(&json).expect("binary_request_to_json wrote invalid JSON");
            if let Some(inputs) = value.get("inputs").and_then(|v| v.as_array()) {
                for input in inputs {
                    assert!(
                        input.pointer("/parameters/binary_data_size").is_none(),
                        "binary_data_size left in a converted request"
                    );
                }
            }
            if let Ok(request) = serde_json::from_slice::<InferRequest>(&json) {
                cascadia_fuzz::check_request(&request, model);
            }
        }
    }
});
