#![no_main]

#[path = "../properties.rs"]
mod properties;

libfuzzer_sys::fuzz_target!(
    init: {
        // segclust turns the parquet crate's panics on damaged files into errors
        // (`guard::catch`), but libFuzzer's panic hook would abort on them first. A panic that
        // escapes segclust still ends the run: libfuzzer-sys aborts on any unwound panic.
        std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
    },
    |data: &[u8]| {
        if let Err(e) = properties::segments_file(data, "parquet") {
            panic!("{e}");
        }
    }
);
