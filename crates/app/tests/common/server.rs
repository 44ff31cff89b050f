//! `handwritten serve` as a child process on a port the system chose, and plain HTTP/1.1 over a
//! socket to talk to it, hostile requests included.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running server, stopped with Ctrl-C (SIGINT) when dropped.
pub struct Server {
    child: Child,
    pub address: SocketAddr,
}

impl Server {
    /// Serves `checkpoint` on the cpu device, with `extra` flags.
    pub fn start(checkpoint: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_handwritten"))
            .args(["serve", "--device", "cpu", "--port", "0", "--checkpoint"])
            .arg(checkpoint)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting handwritten serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(address) = line
            .strip_prefix("serving http://")
            .and_then(|rest| rest.trim().strip_suffix('/'))
        else {
            let _ = child.kill();
            let mut stderr = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            panic!("handwritten serve printed {line:?}:\n{stderr}");
        };
        Server {
            address: address.parse().unwrap(),
            child,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.address)
    }

    /// Sends SIGINT and waits for the exit, at most `within`.
    pub fn interrupt(&mut self, within: Duration) -> (ExitStatus, ChildStderr) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.child.stderr.take().unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "serve did not stop within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `POST /predict` with `body`: the status and the JSON answer.
    pub fn predict(&self, body: &[u8]) -> (u16, Value) {
        let mut request = format!(
            "POST /predict HTTP/1.1\r\nhost: {}\r\ncontent-type: application/octet-stream\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            self.address,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let (status, body) = exchange(self.address, &request);
        let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{status}: not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        });
        (status, json)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: as in interrupt.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
            let _ = self.child.wait();
        }
    }
}

/// Writes `request` whole, reads the answer to the end: its status and body.
pub fn exchange(address: SocketAddr, request: &[u8]) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // The server may answer (413) and close before it has read all of a large body.
    let _ = stream.write_all(request);
    read_response(&mut stream)
}

/// Reads an HTTP/1.1 response to the connection's end: its status and body.
pub fn read_response(stream: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3)?.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header end");
    (status, bytes[split + 4..].to_vec())
}
