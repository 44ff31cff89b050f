//! docs/network.md's table of the network at batch 64 (each layer's output shape, parameters and
//! FLOPs), recomputed from the ops' shapes (`Conv2dShape`, `Pool2dShape`, `LinearShape`) and the
//! reference ConvNet's parameters, so that the page cannot drift from the code; and the step's
//! total as the other pages quote it.

use kernels::{Conv2dShape, Device, LinearShape};
use nn::{ConvNet, ConvNetConfig};

const BATCH: usize = 64;
const PAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/network.md");
const BEGIN: &str = "<!-- network table: crates/nn/tests/network_table.rs -->";
const END: &str = "<!-- end of network table -->";

struct Row {
    layer: String,
    output: Vec<usize>,
    /// The state_dict prefix of its parameters ("" for none).
    params: &'static str,
    forward: u64,
    backward: u64,
    backward_what: &'static str,
}

fn conv(c: usize, o: usize, side: usize) -> Conv2dShape {
    Conv2dShape {
        batch: BATCH,
        in_channels: c,
        out_channels: o,
        height: side,
        width: side,
        kernel: 3,
        stride: 1,
        padding: 1,
    }
}

fn linear(i: usize, o: usize) -> LinearShape {
    LinearShape {
        batch: BATCH,
        in_features: i,
        out_features: o,
    }
}

/// The reference network's layers at batch 64. A backward pass is one product per gradient, each
/// as many multiply-adds as the forward: dW and dx, but conv1 has no dx (its input is the data).
fn rows() -> Vec<Row> {
    let c = ConvNetConfig::reference();
    let conv1 = conv(1, c.conv1_channels, c.image_size);
    let pool1 = conv1.pool2x2();
    let conv2 = conv(c.conv1_channels, c.conv2_channels, pool1.out_height());
    let pool2 = conv2.pool2x2();
    let (h1, h2) = (pool2.out_height(), pool2.out_width());
    assert_eq!(c.conv2_channels * h1 * h2, c.flat_features());
    let fc1 = linear(c.flat_features(), c.hidden1);
    let fc2 = linear(c.hidden1, c.hidden2);
    let fc3 = linear(c.hidden2, c.classes);
    let conv_out = |s: &Conv2dShape| vec![BATCH, s.out_channels, s.out_height(), s.out_width()];
    let row = |layer: &str, output, params, forward, backward, what| Row {
        layer: layer.to_string(),
        output,
        params,
        forward,
        backward,
        backward_what: what,
    };
    vec![
        row(
            "input",
            vec![BATCH, 1, c.image_size, c.image_size],
            "",
            0,
            0,
            "",
        ),
        row(
            "conv1: Conv2d(1→32, 3x3, pad 1)",
            conv_out(&conv1),
            "conv2d.0.",
            conv1.forward_flops(),
            conv1.forward_flops(),
            "dW (no dx: the input is the data)",
        ),
        row(
            "MaxPool2d(2) + ReLU",
            vec![BATCH, pool1.channels, pool1.out_height(), pool1.out_width()],
            "",
            0,
            0,
            "",
        ),
        row(
            "conv2: Conv2d(32→64, 3x3, pad 1)",
            conv_out(&conv2),
            "conv2d.3.",
            conv2.forward_flops(),
            2 * conv2.forward_flops(),
            "dW, dx",
        ),
        row(
            "MaxPool2d(2) + ReLU",
            vec![BATCH, pool2.channels, h1, h2],
            "",
            0,
            0,
            "",
        ),
        row("flatten", vec![BATCH, c.flat_features()], "", 0, 0, ""),
        row(
            "fc1: Linear(3136→1024) + ReLU",
            vec![BATCH, c.hidden1],
            "fc1.",
            fc1.forward_flops(),
            2 * fc1.forward_flops(),
            "dW, dx",
        ),
        row(
            "fc2: Linear(1024→512) + ReLU",
            vec![BATCH, c.hidden2],
            "fc2.",
            fc2.forward_flops(),
            2 * fc2.forward_flops(),
            "dW, dx",
        ),
        row(
            "fc3: Linear(512→10)",
            vec![BATCH, c.classes],
            "fc3.",
            fc3.forward_flops(),
            2 * fc3.forward_flops(),
            "dW, dx",
        ),
    ]
}

/// Each parameter prefix's element count in the reference ConvNet.
fn parameters(prefix: &str) -> usize {
    if prefix.is_empty() {
        return 0;
    }
    let net = ConvNet::new(&Device::Cpu, ConvNetConfig::reference(), 0).unwrap();
    let lens = net
        .params()
        .into_iter()
        .filter(|p| p.name.starts_with(prefix));
    lens.map(|p| p.value.shape.iter().product::<usize>()).sum()
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn mflop(flops: u64) -> String {
    if flops == 0 {
        "".to_string()
    } else {
        format!("{:.2}", flops as f64 / 1e6)
    }
}

/// The table as the page must hold it, and the step's total flops.
fn table() -> (String, u64) {
    let mut out = String::from(
        "| layer | output | parameters | forward MFLOP | backward MFLOP | backward computes |\n\
         | --- | --- | ---: | ---: | ---: | --- |\n",
    );
    let (mut params, mut forward, mut backward) = (0, 0, 0);
    for row in rows() {
        let p = parameters(row.params);
        params += p;
        forward += row.forward;
        backward += row.backward;
        let shape: Vec<String> = row.output.iter().map(|d| d.to_string()).collect();
        out += &format!(
            "| {} | [{}] | {} | {} | {} | {} |\n",
            row.layer,
            shape.join(", "),
            if p == 0 { String::new() } else { thousands(p) },
            mflop(row.forward),
            mflop(row.backward),
            row.backward_what,
        );
    }
    out += &format!(
        "| **step** | | **{}** | **{}** | **{}** | **{} in all: {:.2} GFLOP** |\n",
        thousands(params),
        mflop(forward),
        mflop(backward),
        mflop(forward + backward),
        (forward + backward) as f64 / 1e9
    );
    (out, forward + backward)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_page_holds_the_networks_table() {
    let page = read(PAGE);
    let start = page.find(BEGIN).expect("docs/network.md: no table marker") + BEGIN.len();
    let end = page[start..]
        .find(END)
        .expect("docs/network.md: no end marker")
        + start;
    let (want, _) = table();
    assert_eq!(
        page[start..end].trim(),
        want.trim(),
        "docs/network.md's table is stale; it should read:\n{want}"
    );
}

#[test]
fn the_pages_quote_the_steps_flops() {
    let (_, total) = table();
    let quote = format!("{:.2} GFLOP", total as f64 / 1e9);
    for page in ["README.md", "network.md"] {
        let text = read(&format!("{}/../../docs/{page}", env!("CARGO_MANIFEST_DIR")));
        assert!(text.contains(&quote), "docs/{page} does not quote {quote}");
    }
    // The op pages quote their largest products.
    let c = ConvNetConfig::reference();
    let conv2 = conv(c.conv1_channels, c.conv2_channels, c.image_size / 2);
    let fc1 = linear(c.flat_features(), c.hidden1);
    for (page, flops) in [
        ("conv2d.md", conv2.forward_flops()),
        ("linear.md", fc1.forward_flops()),
    ] {
        let quote = format!("{:.2} GFLOP", flops as f64 / 1e9);
        let text = read(&format!("{}/../../docs/{page}", env!("CARGO_MANIFEST_DIR")));
        assert!(text.contains(&quote), "docs/{page} does not quote {quote}");
    }
}

#[test]
fn the_table_counts_every_parameter_of_the_model() {
    let net = ConvNet::new(&Device::Cpu, ConvNetConfig::reference(), 0).unwrap();
    let all: usize = net
        .params()
        .iter()
        .map(|p| p.value.shape.iter().product::<usize>())
        .sum();
    let counted: usize = rows().iter().map(|r| parameters(r.params)).sum();
    assert_eq!(counted, all);
}
