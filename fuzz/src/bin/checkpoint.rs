//! Fuzz target: the bytes of a checkpoint file through the loader, on the cpu device.

use std::io::Read;
use std::path::Path;

use kernels::Device;
use nn::ConvNet;

fn main() {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .expect("reading stdin");
    let device = Device::from_name("cpu").expect("the cpu device");
    if let Ok(net) = ConvNet::load_bytes(&device, &input, Path::new("fuzz.safetensors")) {
        // A network that loads has only finite weights, no more of them than the file held.
        let values: usize = net.params().iter().map(|p| p.value.data.len()).sum();
        assert!(values * 4 <= input.len());
        for param in net.params() {
            let weights = param.value.to_vec(&device).expect("reading weights back");
            assert!(weights.iter().all(|w| w.is_finite()));
        }
    }
}
