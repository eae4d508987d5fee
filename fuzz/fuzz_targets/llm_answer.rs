#![no_main]

#[path = "../properties.rs"]
mod properties;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = properties::llm_answer(&String::from_utf8_lossy(data)) {
        panic!("{e}");
    }
});
