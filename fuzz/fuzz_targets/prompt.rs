#![no_main]

#[path = "../properties.rs"]
mod properties;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = properties::prompt(&String::from_utf8_lossy(data)) {
        panic!("{e}");
    }
});
