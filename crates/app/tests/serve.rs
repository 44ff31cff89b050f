//! `handwritten serve`: the page, the API's answer and its layers, and hostile requests
//! (oversized, truncated, not an image, a decompression bomb, many at once, slow clients), after
//! each of which the server still answers. The network is untrained: only the plumbing counts.

use std::io::{Cursor, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use image::{GrayImage, ImageFormat, Luma};
use kernels::Device;
use nn::{ConvNet, ConvNetConfig};

mod common;

use common::scratch;
use common::server::{exchange, read_response, Server};

/// The time limit the servers here run with, so that slow clients are cut off soon.
const TIME_LIMIT: &str = "1";

fn checkpoint(name: &str) -> PathBuf {
    let path = scratch(name).join("model.safetensors");
    let net = ConvNet::new(&Device::Cpu, ConvNetConfig::reference(), 1).unwrap();
    net.save(&path).unwrap();
    path
}

fn start(name: &str) -> Server {
    Server::start(&checkpoint(name), &["--time-limit", TIME_LIMIT])
}

/// A dark bar on white paper, as a PNG file.
fn png() -> Vec<u8> {
    let image = GrayImage::from_fn(120, 120, |x, y| {
        let ink = (55..65).contains(&x) && (20..100).contains(&y);
        Luma([if ink { 0 } else { 255 }])
    });
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .unwrap();
    bytes
}

/// The server answers a good request in full.
fn assert_serves(server: &Server) {
    let (status, answer) = server.predict(&png());
    assert_eq!(status, 200, "{answer}");
    assert!(answer["digit"].as_u64().is_some_and(|d| d < 10), "{answer}");
}

fn assert_error(status: u16, answer: &serde_json::Value, expected: u16, naming: &str) {
    assert_eq!(status, expected, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains(naming), "{naming:?} not in {answer}");
}

#[test]
fn the_api_answers_the_digit_its_probabilities_and_every_layer() {
    let server = start("api");
    let (status, page) = exchange(
        server.address,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("<canvas id=\"pad\""), "{page}");

    let (status, answer) = server.predict(&png());
    assert_eq!(status, 200, "{answer}");
    let probabilities: Vec<f64> = answer["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect();
    assert_eq!(probabilities.len(), 10);
    assert!((probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-3);
    let best = (0..10)
        .max_by(|&a, &b| probabilities[a].total_cmp(&probabilities[b]))
        .unwrap();
    assert_eq!(answer["digit"], best);
    let layers = &answer["layers"];
    for (name, shape) in [
        ("input", vec![1, 28, 28]),
        ("conv1_pooled", vec![32, 14, 14]),
        ("conv2_pooled", vec![64, 7, 7]),
        ("fc1", vec![1024]),
        ("fc2", vec![512]),
        ("logits", vec![10]),
    ] {
        let layer = &layers[name];
        assert_eq!(layer["shape"], serde_json::json!(shape), "{name}");
        let values = layer["values"].as_array().unwrap();
        assert_eq!(values.len(), shape.iter().product::<usize>(), "{name}");
    }
    // The input is the bar as MNIST would hold it: light ink (1) on black (-1), centred.
    let input = layers["input"]["values"].as_array().unwrap();
    let at = |x: usize, y: usize| input[y * 28 + x].as_f64().unwrap();
    assert_eq!((at(0, 0), at(14, 14)), (-1.0, 1.0));
}

#[test]
fn bad_bodies_get_4xx_json_errors_naming_the_problem() {
    let server = start("bad-bodies");
    let (status, answer) = server.predict(b"");
    assert_error(status, &answer, 400, "empty");
    assert_serves(&server);

    let (status, answer) = server.predict(b"these are not the pixels you are looking for");
    assert_error(status, &answer, 400, "not a PNG");
    assert_serves(&server);

    let whole = png();
    let (status, answer) = server.predict(&whole[..whole.len() / 2]);
    assert_error(status, &answer, 400, "not a PNG");
    assert_serves(&server);

    let (status, answer) = server.predict(&vec![0; 5 << 20]);
    assert_error(status, &answer, 413, "larger than");
    assert_serves(&server);

    // A body with no length, sent in chunks past the bound, is cut off too.
    let mut request =
        b"POST /predict HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            .to_vec();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..5 {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(&chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let (status, body) = exchange(server.address, &request);
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert_serves(&server);

    let (status, answer) = server.predict(&decompression_bomb());
    assert_error(status, &answer, 400, "limit");
    assert_serves(&server);

    for (request, expected) in [
        (
            &b"GET /nothing HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"[..],
            404,
        ),
        (
            b"GET /predict HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            405,
        ),
        (b"NONSENSE\r\n\r\n", 400),
    ] {
        let (status, _) = exchange(server.address, request);
        assert_eq!(status, expected, "{}", String::from_utf8_lossy(request));
    }
    assert_serves(&server);
}

/// A PNG of a few hundred bytes that declares 100000x100000 grey pixels (10 GB decoded).
fn decompression_bomb() -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let side = 100_000u32;
    let mut header = Vec::new();
    header.extend_from_slice(&side.to_be_bytes());
    header.extend_from_slice(&side.to_be_bytes());
    header.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit grey, deflate, no interlace
    let mut rows = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    rows.write_all(&vec![0; 1 << 16]).unwrap();
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &header);
    chunk(&mut png, b"IDAT", &rows.finish().unwrap());
    chunk(&mut png, b"IEND", &[]);
    png
}

#[test]
fn many_requests_at_once_are_answered_or_refused_busy() {
    let server = start("many");
    let image = png();
    let answers: Vec<(u16, serde_json::Value)> = thread::scope(|s| {
        let workers: Vec<_> = (0..40)
            .map(|_| s.spawn(|| server.predict(&image)))
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let served = answers.iter().filter(|(status, _)| *status == 200).count();
    for (status, answer) in &answers {
        if *status != 200 {
            assert_error(*status, answer, 503, "busy");
        }
    }
    assert!(served >= 1, "{answers:?}");
    assert_serves(&server);

    // Idle connections past the bound are refused at once, and the server recovers when they go.
    let idle: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(server.address).unwrap())
        .collect();
    thread::sleep(Duration::from_millis(200));
    let (status, answer) = server.predict(&image);
    assert_error(status, &answer, 503, "connections");
    drop(idle);
    thread::sleep(Duration::from_millis(200));
    assert_serves(&server);
}

#[test]
fn slow_clients_are_cut_off_and_hold_up_no_one() {
    let server = start("slow");
    let time_limit = Duration::from_secs(TIME_LIMIT.parse().unwrap());

    // Half a request's headers, then nothing: the others are served meanwhile, and the
    // connection is closed once the time limit has passed.
    let mut headers = TcpStream::connect(server.address).unwrap();
    headers
        .write_all(b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-")
        .unwrap();
    // Half a body: 1000 bytes promised, 10 sent.
    let mut body = TcpStream::connect(server.address).unwrap();
    body.write_all(b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n0123456789")
        .unwrap();
    let started = Instant::now();
    assert_serves(&server);

    body.set_read_timeout(Some(time_limit * 10)).unwrap();
    let (status, answer) = read_response(&mut body);
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&answer));
    assert!(String::from_utf8_lossy(&answer).contains("did not arrive"));

    headers.set_read_timeout(Some(time_limit * 10)).unwrap();
    let mut rest = Vec::new();
    let _ = headers.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited < time_limit * 5,
        "the half-sent headers held the connection {waited:?}"
    );
    assert_serves(&server);
}

#[test]
fn ctrl_c_stops_the_server_cleanly() {
    let mut server = start("ctrl-c");
    assert_serves(&server);
    let (status, mut stderr) = server.interrupt(Duration::from_secs(10));
    let mut said = String::new();
    stderr.read_to_string(&mut said).unwrap();
    assert!(status.success(), "{status}: {said}");
    assert!(said.contains("stopped serving"), "{said}");
}

#[test]
fn a_missing_checkpoint_is_an_error_naming_it() {
    let output = common::run(&[
        "serve",
        "--device",
        "cpu",
        "--port",
        "0",
        "--checkpoint",
        "/nonexistent/model.safetensors",
    ]);
    assert!(!output.status.success());
    let said = common::stderr(&output);
    assert!(said.contains("/nonexistent/model.safetensors"), "{said}");
}
