//! No data loss, as a property: random writes over random stream types reassemble exactly from the
//! `store` and `directory` outputs of the real binary.

use std::io::Write;
use std::time::Duration;

use proptest::prelude::*;

use crate::streaming::{Serve, cat, handshake};
use crate::util::TestHome;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Text,
    Binary,
    Datagram,
}

fn write_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(Vec::new()),
        // Line ends, lone `\r`, pieces of multi-byte UTF-8 and anything else.
        6 => proptest::collection::vec(
            prop_oneof![Just(b'\n'), Just(b'\r'), Just(0xe2u8), Just(0x82u8), Just(0xacu8), Just(0xffu8), any::<u8>()],
            0..200
        ),
        // A huge line.
        1 => (any::<u8>(), 100_000usize..400_000).prop_map(|(b, n)| vec![if b == b'\n' { b'x' } else { b }; n]),
    ]
}

fn stream_strategy() -> impl Strategy<Value = (Kind, Vec<Vec<u8>>)> {
    (
        prop_oneof![Just(Kind::Text), Just(Kind::Binary), Just(Kind::Datagram)],
        proptest::collection::vec(write_strategy(), 0..10),
    )
}

fn varint(n: usize) -> Vec<u8> {
    let mut v = Vec::new();
    let mut n = n as u64;
    while n >= 0x80 {
        v.push((n as u8) | 0x80);
        n >>= 7;
    }
    v.push(n as u8);
    v
}

/// Sends every stream concurrently, each write as its own `write` call.
fn send_all(serve: &Serve, streams: &[(Kind, Vec<Vec<u8>>)]) {
    std::thread::scope(|scope| {
        for (i, (kind, writes)) in streams.iter().enumerate() {
            let sock = serve.sock.clone();
            scope.spawn(move || {
                let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
                let ty = match kind {
                    Kind::Text => "text",
                    Kind::Binary => "binary",
                    Kind::Datagram => "datagram",
                };
                s.write_all(&handshake(&format!(r#"{{"name":"n/s{i}","type":"{ty}"}}"#))).unwrap();
                for w in writes {
                    if *kind == Kind::Datagram {
                        s.write_all(&varint(w.len())).unwrap();
                    }
                    s.write_all(w).unwrap();
                    if w.len() % 3 == 0 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            });
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_streams_reassemble_exactly_from_store_and_directory(
        streams in proptest::collection::vec(stream_strategy(), 1..6),
        age in prop_oneof![Just("0"), Just("5ms"), Just("5s")],
    ) {
        let home = TestHome::new();
        let dir = home.path().join("dir");
        let mut flags = vec!["--prefix", "pp", "--output-max-buffer-age", age];
        if age == "0" {
            flags.push("--output-no-buffer");
        }
        let store = Serve::start(&home, &flags);
        let spec = format!("directory,path={}", dir.display());
        let home2 = TestHome::new();
        let mut dflags = flags.clone();
        dflags.extend(["--output", spec.as_str()]);
        let directory = Serve::start(&home2, &dflags);
        send_all(&store, &streams);
        send_all(&directory, &streams);
        store.stop();
        directory.stop();
        for (i, (kind, writes)) in streams.iter().enumerate() {
            let path = format!("pp/+/n/s{i}");
            let from_store = cat(&home, "local", &path);
            match kind {
                Kind::Datagram => {
                    let wire: Vec<u8> = writes.iter().flat_map(|w| varint(w.len()).into_iter().chain(w.iter().copied())).collect();
                    prop_assert_eq!(&from_store, &wire, "store, datagram stream {}", i);
                    for (j, w) in writes.iter().enumerate() {
                        let f = dir.join(format!("n+/_{j:05}.s{i}"));
                        prop_assert_eq!(&std::fs::read(&f).unwrap(), w, "directory, datagram {} of stream {}", j, i);
                    }
                    let extra = dir.join(format!("n+/_{:05}.s{}", writes.len(), i));
                    prop_assert!(!extra.exists(), "no extra datagram file");
                }
                _ => {
                    let all = writes.concat();
                    prop_assert!(from_store == all, "store, stream {} ({:?}): {} bytes back for {}", i, kind, from_store.len(), all.len());
                    let from_dir = std::fs::read(dir.join(format!("n+/s{i}"))).unwrap();
                    prop_assert!(from_dir == all, "directory, stream {} ({:?}): {} bytes back for {}", i, kind, from_dir.len(), all.len());
                }
            }
        }
    }
}
