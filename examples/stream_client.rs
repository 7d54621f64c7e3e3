//! A stream client for tests (`make test-windows` runs it as a Windows program under Wine): from
//! the `LOGDOG_*` environment `butler run` gives it, it opens a text, a binary and a datagram
//! stream through `butler::streaming::streamclient` and writes known bytes to each, so a test can
//! compare what the store kept byte for byte (`tests/it/windows.rs` has the same data).

use std::io::Write;

use butler::streaming::streamclient::StreamClient;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = StreamClient::from_env()?;
    let mut text = client.open_text("text")?;
    // Partial UTF-8 at a write boundary, a lone \r, CRLF and no final newline.
    text.write_all(b"one\r\ntwo \xc3")?;
    text.write_all(b"\xa9\rthree\nfour")?;
    drop(text);
    let mut binary = client.open_binary("binary")?;
    let bytes: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    binary.write_all(&bytes)?;
    drop(binary);
    let mut datagrams = client.open_datagram("datagram")?;
    for d in [&b"first"[..], b"", &[0u8, 1, 2, 255]] {
        datagrams.send(d)?;
    }
    Ok(())
}
