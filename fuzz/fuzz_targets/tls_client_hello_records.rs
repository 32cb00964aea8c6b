//! The record-reassembling ClientHello reader fed a stream that grows in pieces of varied sizes: it
//! must give the answer the whole stream gives at once. The first byte seeds the piece sizes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor_core::extract::Step;
use monitor_core::extract::tls::{self, ClientHelloReader};
use monitor_fuzz::{PieceSizes, check_step};

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let whole = tls::parse_client_hello(stream);
    let mut sizes = PieceSizes::new(seed);
    let mut reader = ClientHelloReader::default();
    let mut have = 0;
    let mut need = 0;
    let last = loop {
        have = (have + sizes.next_size()).min(stream.len());
        // A streaming caller only calls again once it has what the reader asked for.
        if have < need && have < stream.len() {
            continue;
        }
        let step = reader.read(&stream[..have]);
        check_step(&step, have, "ClientHelloReader::read");
        match step {
            Step::NeedMore(n) if have < stream.len() => need = n,
            step => break step,
        }
    };
    assert_eq!(last, whole, "pieces and the whole stream disagree");
});
