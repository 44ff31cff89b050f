//! The page in a real browser: headless Chromium, driven through `chromedriver` (WebDriver), draws
//! digits on the canvas with pointer events, by touch and by mouse, and the page must show the
//! right prediction and draw every layer's picture. The network is trained here, briefly.
//!
//! Without `chromium` and `chromedriver` (Debian's packages) the test says so and passes, unless
//! `HANDWRITTEN_REQUIRE_BROWSER=1` (set by `.ci/run`), where it fails. With
//! `HANDWRITTEN_SCREENSHOT=1` it saves the page as `docs/images/serve.png`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::server::Server;
use common::{scratch, train_small_network};

/// The W3C name of an element reference in WebDriver's JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long the page may take to show a prediction after the last stroke.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

#[test]
fn the_page_recognises_digits_drawn_on_it_and_draws_every_layer() {
    let required = std::env::var("HANDWRITTEN_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let (Some(chromium), Some(chromedriver)) = (on_path("chromium"), on_path("chromedriver"))
    else {
        assert!(
            !required,
            "HANDWRITTEN_REQUIRE_BROWSER=1, but chromium or chromedriver is not on PATH \
             (Debian: apt-get install chromium chromium-driver)"
        );
        eprintln!(
            "skipped: the browser test needs chromium and chromedriver on PATH \
             (Debian: apt-get install chromium chromium-driver)"
        );
        return;
    };

    let dir = scratch("page");
    let run = dir.join("run");
    let checkpoint = train_small_network(&run);
    let server = Server::start(&checkpoint, &[]);
    let driver = Driver::start(&chromedriver, &chromium);
    driver.post("url", json!({ "url": server.url() }));
    let pad = driver.element("#pad");
    let rect = driver.get(&format!("element/{pad}/rect"));
    let side = rect["width"].as_f64().unwrap();

    for (digit, strokes, pointer) in [(0, zero(), "touch"), (7, seven(), "mouse")] {
        driver.post(
            &format!("element/{}/click", driver.element("#clear")),
            json!({}),
        );
        driver.draw(&pad, side, &strokes, pointer);
        let shown = driver.wait_for_digit(digit);
        assert_eq!(shown, digit.to_string(), "drew a {digit} by {pointer}");
        let drawn = driver.script(LAYERS_DRAWN);
        for id in ["input", "conv1", "conv2", "fc1", "fc2", "logits"] {
            assert!(
                drawn[id].as_u64().is_some_and(|levels| levels > 1),
                "after a {digit}: the {id} picture is blank ({drawn})"
            );
        }
        let bar = driver.script(&format!(
            "return parseFloat(document.querySelectorAll('#bars .bar i')[{digit}].style.width)"
        ));
        assert!(
            bar.as_f64().is_some_and(|w| w > 50.0),
            "{digit}'s bar: {bar}"
        );
    }

    if std::env::var("HANDWRITTEN_SCREENSHOT").is_ok_and(|v| v == "1") {
        let png = base64_decode(driver.get("screenshot").as_str().unwrap());
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/images/serve.png");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, png).unwrap();
        eprintln!("saved {}", path.display());
    }
}

/// For each layer's canvas, how many distinct red levels it shows (1: blank), if drawn.
const LAYERS_DRAWN: &str = "
    const levels = {};
    for (const id of ['input', 'conv1', 'conv2', 'fc1', 'fc2', 'logits']) {
        const c = document.getElementById(id);
        if (c.dataset.drawn !== 'true') { levels[id] = 0; continue; }
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const seen = new Set();
        for (let i = 0; i < data.length; i += 4) seen.add(data[i]);
        levels[id] = seen.size;
    }
    return levels;";

/// Strokes in the pad's unit square, each a polyline.
type Strokes = Vec<Vec<(f64, f64)>>;

fn zero() -> Strokes {
    let points = (0..=48).map(|i| {
        let t = std::f64::consts::TAU * f64::from(i) / 48.0;
        (0.5 + 0.2 * t.sin(), 0.5 - 0.3 * t.cos())
    });
    vec![points.collect()]
}

fn seven() -> Strokes {
    vec![vec![(0.28, 0.2), (0.72, 0.2), (0.5, 0.5), (0.4, 0.82)]]
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A chromedriver process and one headless Chromium session in it.
struct Driver {
    process: Child,
    address: SocketAddr,
    session: String,
}

impl Driver {
    fn start(chromedriver: &Path, chromium: &Path) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let mut driver = Driver {
            process,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            session: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(driver.address).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"],
            },
        }}});
        let answer = driver.request("POST", "/session", Some(&capabilities));
        driver.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_string();
        driver
    }

    fn element(&self, css: &str) -> String {
        let found = self.post("element", json!({ "using": "css selector", "value": css }));
        let id = found[ELEMENT].as_str();
        id.unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    /// Draws `strokes` on the square element `pad`, `side` CSS pixels wide, as `pointer`
    /// (mouse, pen or touch) events.
    fn draw(&self, pad: &str, side: f64, strokes: &Strokes, pointer: &str) {
        let origin = json!({ ELEMENT: pad });
        // Offsets from the element's centre, in whole CSS pixels.
        let offset = |v: f64| ((v - 0.5) * side).round() as i64;
        let mut actions = Vec::new();
        for stroke in strokes {
            let (x, y) = stroke[0];
            actions.push(
                json!({ "type": "pointerMove", "duration": 0, "origin": origin,
                                 "x": offset(x), "y": offset(y) }),
            );
            actions.push(json!({ "type": "pointerDown", "button": 0 }));
            for pair in stroke.windows(2) {
                let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
                for step in 1..=6 {
                    let t = f64::from(step) / 6.0;
                    actions.push(
                        json!({ "type": "pointerMove", "duration": 10, "origin": origin,
                                         "x": offset(x0 + t * (x1 - x0)),
                                         "y": offset(y0 + t * (y1 - y0)) }),
                    );
                }
            }
            actions.push(json!({ "type": "pointerUp", "button": 0 }));
        }
        self.post(
            "actions",
            json!({ "actions": [{ "type": "pointer", "id": pointer,
                                  "parameters": { "pointerType": pointer },
                                  "actions": actions }] }),
        );
        self.request(
            "DELETE",
            &format!("/session/{}/actions", self.session),
            None,
        );
    }

    /// The digit the page shows once it shows `expected` or [`ANSWER_WAIT`] has passed.
    fn wait_for_digit(&self, expected: usize) -> String {
        let deadline = Instant::now() + ANSWER_WAIT;
        loop {
            let shown = self.script("return document.getElementById('digit').textContent");
            let shown = shown.as_str().unwrap_or_default().to_string();
            if shown == expected.to_string() || Instant::now() > deadline {
                return shown;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn script(&self, body: &str) -> Value {
        self.post("execute/sync", json!({ "script": body, "args": [] }))
    }

    fn get(&self, command: &str) -> Value {
        self.request("GET", &format!("/session/{}/{command}", self.session), None)
    }

    fn post(&self, command: &str, body: Value) -> Value {
        let path = format!("/session/{}/{command}", self.session);
        self.request("POST", &path, Some(&body))
    }

    /// One WebDriver command: its `value`, or a panic with the driver's error.
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut stream = TcpStream::connect(self.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.address,
            body.len()
        )
        .unwrap();
        // chromedriver keeps the connection open: read the head, then what it says follows.
        let mut response = Vec::new();
        let mut byte = [0; 1];
        while !response.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            response.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&response).to_lowercase();
        let length = head.lines().find_map(|line| {
            let value = line.strip_prefix("content-length:")?;
            value.trim().parse::<usize>().ok()
        });
        let payload = match length {
            Some(length) => {
                let mut payload = vec![0; length];
                stream.read_exact(&mut payload).unwrap();
                payload
            }
            None => {
                let mut chunked = Vec::new();
                while !chunked.ends_with(b"0\r\n\r\n") {
                    stream.read_exact(&mut byte).unwrap();
                    chunked.push(byte[0]);
                }
                dechunk(&chunked)
            }
        };
        let answer: Value = serde_json::from_slice(&payload).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: {e}: {}",
                String::from_utf8_lossy(&payload)
            )
        });
        let value = answer["value"].clone();
        assert!(
            value.get("error").is_none(),
            "{method} {path}: {}",
            value.to_string().chars().take(2000).collect::<String>()
        );
        value
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.request("DELETE", &path, None)
            }));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn dechunk(mut chunked: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = chunked.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&chunked[..end]).unwrap().trim();
        let size = usize::from_str_radix(size, 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&chunked[end + 2..end + 2 + size]);
        chunked = &chunked[end + 2 + size + 2..];
    }
    out
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for group in digits.chunks(4) {
        let bits = group
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &d)| acc | u32::from(d) << (18 - 6 * i));
        out.extend_from_slice(&bits.to_be_bytes()[1..group.len()]);
    }
    out
}
