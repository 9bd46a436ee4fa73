#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| edgechat_fuzz_logic::rate_limiter(data));
