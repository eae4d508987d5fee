#![no_main]

#[path = "../properties.rs"]
mod properties;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = properties::segments_file(data, "jsonl") {
        panic!("{e}");
    }
});
