//! `handwritten serve`: a page to draw a digit on and watch what every layer makes of it, and the
//! JSON API under it.
//!
//! - `GET /`: the page (`page.html`, embedded: no other file, no external resource).
//! - `POST /predict`, an image file as the body: `{"digit", "probabilities", "layers"}`.
//!
//! HTTP/1.1 by the `hyper` crate on a two-thread tokio runtime. One thread owns the network and
//! prepares and classifies every image in turn: a device runs one forward at a time, and an
//! image's decode, bounded as predict's, is never run for two clients at once. What a client can
//! hold is bounded: the body's size, the time to send headers and body, the connections open and
//! the predictions queued; past a bound it gets a JSON error, and the others go on.

use std::convert::Infallible;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use nn::{normalized_images, Activations, ConvNet};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::mnist::{CLASSES, IMAGE_SIDE};
use crate::predict::{prepare_bytes, softmax, ImageProblem};
use crate::signals;
use crate::train::{load_checkpoint, open_device, resolve_precision};

/// The page, HTML, CSS and JavaScript in one file.
const PAGE: &str = include_str!("page.html");
/// The largest request body: an image file far larger than any drawing.
pub const MAX_BODY_BYTES: usize = 4 << 20;
/// Connections open at once; one more is answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 64;
/// Predictions queued or running at once; one more is answered 503.
pub const MAX_QUEUED_PREDICTIONS: usize = 8;
/// How long a request waits for the network: far more than a queue of forwards takes, but a
/// bound should the device hang.
const NETWORK_TIME_LIMIT: Duration = Duration::from_secs(60);
/// How often the accept loop looks for Ctrl-C.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

pub struct ServeOptions {
    pub checkpoint: std::path::PathBuf,
    pub host: String,
    pub port: u16,
    pub device: String,
    /// The time a client has to send a request's headers, and again its body.
    pub time_limit: Duration,
}

/// Serves until Ctrl-C (SIGINT or SIGTERM). Prints `serving http://ADDR/` on stdout once the
/// port is bound (with `--port 0`, the port the system chose).
pub fn serve(options: &ServeOptions) -> Result<()> {
    let network = Network::start(options)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    let address = format!("{}:{}", options.host, options.port);
    let listener = runtime
        .block_on(TcpListener::bind(&address))
        .with_context(|| {
            format!(
                "--host {} --port {}: cannot listen",
                options.host, options.port
            )
        })?;
    let bound = listener.local_addr()?;
    println!("serving http://{bound}/");
    signals::install();
    let state = Arc::new(State {
        network,
        queue: Arc::new(Semaphore::new(MAX_QUEUED_PREDICTIONS)),
        time_limit: options.time_limit,
    });
    runtime.block_on(accept_until_stopped(listener, state));
    // Connections still open get a moment to finish, then are dropped.
    runtime.shutdown_timeout(Duration::from_secs(1));
    eprintln!("stopped serving http://{bound}/");
    Ok(())
}

struct State {
    network: Network,
    queue: Arc<Semaphore>,
    time_limit: Duration,
}

async fn accept_until_stopped(listener: TcpListener, state: Arc<State>) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut poll = tokio::time::interval(SIGNAL_POLL);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors, or a connection reset before it was taken: go on.
                Err(_) => continue,
            },
            _ = poll.tick() => {
                if signals::stop_requested() {
                    return;
                }
                continue;
            }
        };
        match Arc::clone(&connections).try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(serve_connection(stream, Arc::clone(&state), permit));
            }
            Err(_) => {
                tokio::spawn(refuse_connection(stream, state.time_limit));
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<State>, _permit: OwnedSemaphorePermit) {
    let time_limit = state.time_limit;
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(respond(&state, request).await) }
    });
    // The header timeout also closes a kept-alive connection that sends nothing more.
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(time_limit)
        .serve_connection(TokioIo::new(stream), service);
    // A client gone mid-request is no concern of the others.
    let _ = connection.await;
}

/// A canned 503 for a connection past [`MAX_CONNECTIONS`], written without reading its request.
async fn refuse_connection(mut stream: TcpStream, time_limit: Duration) {
    let body = error_body(&format!(
        "busy: {MAX_CONNECTIONS} connections are open; try again"
    ));
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: \
         {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(time_limit, stream.write_all(response.as_bytes())).await;
}

async fn respond(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    match (request.method(), path.as_str()) {
        (&Method::GET, "/") => Response::builder()
            .header(CONTENT_TYPE, "text/html; charset=utf-8")
            .body(Full::new(Bytes::from_static(PAGE.as_bytes())))
            .expect("a static response is well formed"),
        (&Method::POST, "/predict") => match predict(state, request).await {
            Ok(answer) => json_response(StatusCode::OK, &answer),
            Err((status, message)) => json_response(status, &json!({ "error": message })),
        },
        (_, "/" | "/predict") => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({ "error": format!("{} {path}: use GET / or POST /predict", request.method()) }),
        ),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("no {path} here: GET / is the page, POST /predict the API") }),
        ),
    }
}

type Problem = (StatusCode, String);

async fn predict(state: &State, request: Request<Incoming>) -> Result<Value, Problem> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    // Held until the network has answered, or given up on: bounds the queue, not the waiters.
    let permit = Arc::clone(&state.queue).try_acquire_owned().map_err(|_| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("busy: {MAX_QUEUED_PREDICTIONS} predictions are queued; try again"),
        )
    })?;
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES).collect();
    let body = match tokio::time::timeout(state.time_limit, body).await {
        Err(_) => {
            return Err((
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} s",
                    state.time_limit.as_secs_f64()
                ),
            ))
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Ok(Err(e)) => {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("the body could not be read: {e}"),
            ))
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    if body.is_empty() {
        return Err((
            StatusCode::BAD_REQUEST,
            "the body is empty: send an image file (PNG, JPEG, BMP or PGM)".to_string(),
        ));
    }
    let (reply, answer) = oneshot::channel();
    state
        .network
        .jobs
        .send(Job {
            image: body,
            reply,
            _permit: permit,
        })
        .map_err(|_| network_gone())?;
    match tokio::time::timeout(NETWORK_TIME_LIMIT, answer).await {
        Err(_) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the network did not answer within {} s; try again",
                NETWORK_TIME_LIMIT.as_secs()
            ),
        )),
        Ok(Err(_)) => Err(network_gone()),
        Ok(Ok(answer)) => answer,
    }
}

fn too_large() -> Problem {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than {MAX_BODY_BYTES} bytes"),
    )
}

fn network_gone() -> Problem {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "the network's thread has stopped".to_string(),
    )
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .expect("a JSON response is well formed")
}

fn error_body(message: &str) -> String {
    json!({ "error": message }).to_string()
}

/// An image to classify, and where its answer goes.
struct Job {
    image: Bytes,
    reply: oneshot::Sender<Result<Value, Problem>>,
    /// Its place in the queue, freed when the job is done.
    _permit: OwnedSemaphorePermit,
}

/// The thread that owns the network.
struct Network {
    jobs: mpsc::Sender<Job>,
}

impl Network {
    /// Opens the device and loads the checkpoint on the network's own thread, and waits for it to
    /// say whether it could.
    fn start(options: &ServeOptions) -> Result<Network> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, started) = mpsc::channel();
        let (device, checkpoint) = (options.device.clone(), options.checkpoint.clone());
        thread::Builder::new()
            .name("network".to_string())
            .spawn(move || {
                let opened = (|| {
                    let device = open_device(&device)?;
                    let precision = resolve_precision(&device, None)?;
                    let mut net = load_checkpoint(&device, &checkpoint)?;
                    net.set_precision(precision);
                    Ok::<_, anyhow::Error>(net)
                })();
                let mut net = match opened {
                    Ok(net) => {
                        let _ = ready.send(Ok(()));
                        net
                    }
                    Err(e) => return drop(ready.send(Err(e))),
                };
                for job in queue {
                    let answer = classify(&mut net, &job.image);
                    // The client may have given up waiting: nothing to do then.
                    let _ = job.reply.send(answer);
                }
            })
            .context("starting the network's thread")?;
        started
            .recv()
            .map_err(|_| anyhow!("the network's thread stopped while loading"))??;
        Ok(Network { jobs })
    }
}

fn classify(net: &mut ConvNet, image: &[u8]) -> Result<Value, Problem> {
    let pixels = prepare_bytes(image).map_err(|problem| {
        let status = match problem {
            ImageProblem::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, format!("the body: {problem}"))
    })?;
    let failed = |e: nn::Error| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the network failed: {e}"),
        )
    };
    let x = normalized_images(net.device(), &pixels, IMAGE_SIDE).map_err(failed)?;
    let trace = net.forward_traced(&x).map_err(failed)?;
    Ok(answer(&trace))
}

/// `{"digit", "probabilities", "layers"}`: each layer a `shape` and its `values`, row-major, for
/// the one image (the batch dimension dropped).
fn answer(trace: &Activations) -> Value {
    let probabilities = softmax(&trace.logits.values);
    let digit = (0..CLASSES)
        .max_by(|&a, &b| probabilities[a].total_cmp(&probabilities[b]))
        .unwrap_or(0);
    let layer = |t: &nn::HostTensor| {
        let values: Vec<f64> = t.values.iter().map(|&v| rounded(v)).collect();
        json!({ "shape": t.shape[1..], "values": values })
    };
    json!({
        "digit": digit,
        "probabilities": probabilities.map(rounded),
        "layers": {
            "input": layer(&trace.input),
            "conv1_pooled": layer(&trace.conv1_pooled),
            "conv2_pooled": layer(&trace.conv2_pooled),
            "fc1": layer(&trace.fc1),
            "fc2": layer(&trace.fc2),
            "logits": layer(&trace.logits),
        }
    })
}

/// Five significant figures and no more: a tenth of the bytes of f32's shortest form.
fn rounded(value: f32) -> f64 {
    let value = f64::from(value);
    if value == 0.0 || !value.is_finite() {
        return if value.is_finite() { 0.0 } else { f64::NAN };
    }
    let scale = 10f64.powi(4 - value.abs().log10().floor() as i32);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_keeps_five_figures() {
        assert_eq!(rounded(0.123_456_78), 0.12346);
        assert_eq!(rounded(-1234.5678), -1234.6);
        assert_eq!(rounded(0.0), 0.0);
        assert_eq!(rounded(3.0e-7), 3.0e-7);
    }
}
