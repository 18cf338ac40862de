//! Fuzzes OIP gRPC request handling: arbitrary bytes through `decode_frame`
//! (the proxy's one-message body), then, on the message (or on the raw bytes
//! when they are not one frame), `peek_model`, `rewrite_model`, prost's
//! `ModelInferRequest`/`ModelReadyRequest`/`ModelMetadataRequest` decoding and
//! the cascade's `to_json_request` plus the stage-1 checks. Must hold: nothing
//! panics; a decoded frame's message is exactly the announced length; when
//! prost decodes a request, `peek_model` agrees on its model name and version
//! (the router and the upstream see the same model); a message `peek_model`
//! accepts also rewrites, and the rewrite is read back by `peek_model` as
//! written and by prost as the same message but for the name; a rewrite with
//! no change is byte-identical.
#![no_main]

use cascadia_oip::grpc::framing::PREFIX_LEN;
use cascadia_oip::grpc::{
    decode_frame, peek_model, rewrite_model, ModelInferRequest, ModelMetadataRequest,
    ModelReadyRequest,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::sync::OnceLock;

static MODEL: OnceLock<cascadia_cascade::LogisticModel> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let message = match decode_frame(data) {
        Ok((_compressed, message)) => {
            let announced = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
            assert_eq!(
                message.len(),
                announced,
                "frame body is not the announced length"
            );
            assert_eq!(message.len() + PREFIX_LEN, data.len());
            message
        }
        Err(_) => data,
    };

    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let peeked = peek_model(message);
    if let Ok(request) = ModelInferRequest::decode(message) {
        let (name, version) = peeked
            .clone()
            .expect("prost decoded a ModelInferRequest that peek_model refused");
        assert_eq!(
            name,
            nonempty(&request.model_name),
            "router and prost disagree on model_name"
        );
        assert_eq!(
            version,
            nonempty(&request.model_version),
            "router and prost disagree on model_version"
        );

        if let Ok(json) = cascadia_cascade::grpc::to_json_request(&request) {
            assert_eq!(json.inputs.len(), request.inputs.len());
            cascadia_fuzz::check_request(&json, MODEL.get_or_init(cascadia_fuzz::model));
        }
    }
    for decoded in [
        ModelReadyRequest::decode(message).map(|r| (r.name, r.version)),
        ModelMetadataRequest::decode(message).map(|r| (r.name, r.version)),
    ] {
        if let Ok((name, version)) = decoded {
            let (peeked_name, peeked_version) = peeked
                .clone()
                .expect("prost decoded a model request that peek_model refused");
            assert_eq!(peeked_name, nonempty(&name));
            assert_eq!(peeked_version, nonempty(&version));
        }
    }

    // The proxy peeks before it rewrites, so what peek accepts must rewrite.
    // (Not the converse: a field that is not replaced is copied unchecked.)
    let rewritten = rewrite_model(message, Some("renamed"), None);
    match (&peeked, rewritten) {
        (Ok((_, version)), Ok(out)) => {
            let (name2, version2) = peek_model(&out).expect("a rewritten message must peek");
            assert_eq!(name2.as_deref(), Some("renamed"));
            assert_eq!(&version2, version, "rewriting the name changed the version");
            if let Ok(original) = ModelInferRequest::decode(message) {
                let mut rewritten =
                    ModelInferRequest::decode(out).expect("a rewritten request must decode");
                assert_eq!(rewritten.model_name, "renamed");
                rewritten.model_name = original.model_name.clone();
                assert_eq!(
                    canonical(&rewritten),
                    canonical(&original),
                    "rewrite changed more than the name"
                );
            }
        }
        (Ok(_), Err(e)) => panic!("peek_model accepted what rewrite_model refused: {e}"),
        (Err(_), _) => {}
    }
    if let Ok(same) = rewrite_model(message, None, None) {
        assert_eq!(
            &same[..],
            message,
            "a rewrite without changes altered the bytes"
        );
    }
    let _ = rewrite_model(message, Some(""), Some("2"));
});

/// The request as text with its maps sorted, for comparing two decodings:
/// `PartialEq` says NaN != NaN, and `HashMap` order differs between maps.
fn canonical(request: &ModelInferRequest) -> String {
    use std::collections::BTreeMap;
    let sorted = |m: &std::collections::HashMap<String, cascadia_oip::grpc::InferParameter>| {
        format!("{:?}", m.iter().collect::<BTreeMap<_, _>>())
    };
    let inputs: Vec<_> = request
        .inputs
        .iter()
        .map(|i| {
            (
                &i.name,
                &i.datatype,
                &i.shape,
                sorted(&i.parameters),
                format!("{:?}", i.contents),
            )
        })
        .collect();
    let outputs: Vec<_> = request
        .outputs
        .iter()
        .map(|o| (&o.name, sorted(&o.parameters)))
        .collect();
    format!(
        "{:?}",
        (
            &request.model_name,
            &request.model_version,
            &request.id,
            sorted(&request.parameters),
            inputs,
            outputs,
            &request.raw_input_contents,
        )
    )
}
