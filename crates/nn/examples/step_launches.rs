//! Lists the launches of one captured training step of the reference network at batch 64 on the
//! emulated device (a 132-SM GPU of compute capability 9.0 by default, in its default precision,
//! TF32), one line each: `kernel grid=X,Y,Z block=X,Y,Z shared=BYTES`. The list is
//! `docs/images/step-launches.txt`, which `tools/docs_figures.py` draws as the step's graph:
//!
//! ```text
//! cargo run --release -p nn --example step_launches > docs/images/step-launches.txt
//! ```

use kernels::Device;
use nn::{Adam, ConvNet, ConvNetConfig, Dataset, Trainer};

const BATCH: usize = 64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::from_name("emulated")?;
    let config = ConvNetConfig::reference();
    let side = config.image_size;
    let mut net = ConvNet::new(&device, config, 0)?;
    net.set_precision(device.default_precision());
    let images = vec![0u8; BATCH * side * side];
    let labels: Vec<u8> = (0..BATCH).map(|i| (i % config.classes) as u8).collect();
    let data = Dataset::upload(&device, &images, &labels, side * side)?;
    let mut trainer = Trainer::new(net, Adam::new(1e-3), BATCH, true)?;
    let indices: Vec<u32> = (0..BATCH as u32).collect();
    // The first step allocates every buffer, the second is captured (and replayed).
    trainer.step(&data, &indices)?;
    trainer.step(&data, &indices)?;
    let launches = trainer
        .step_graph()
        .and_then(|graph| graph.launches())
        .ok_or("the emulated device captured no list of launches")?;
    for launch in launches {
        let [gx, gy, gz] = launch.grid;
        let [bx, by, bz] = launch.block;
        println!(
            "{} grid={gx},{gy},{gz} block={bx},{by},{bz} shared={}",
            launch.kernel, launch.shared_bytes
        );
    }
    Ok(())
}
